package us.kbase.spark;

import static org.hamcrest.CoreMatchers.containsString;
import static org.hamcrest.CoreMatchers.not;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.Status;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.LogCapture;
import us.kbase.spark.testing.RecordingHandler;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;

/**
 * What the shim does with the call's metadata and with the native side's answers: every value of
 * a repeated key reaches the decision, start-up warnings and stale-allow warnings reach the log at
 * WARN, and the denial log stays bounded.
 */
public class ShimBehaviourTest {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final String LOGGING_INTERCEPTOR = "org.apache.spark.sql.connect.service.LoggingInterceptor";

    private static FakeAuth2 fake;
    private static String alice;
    private static String bob;

    @BeforeClass
    public static void startFake() throws Exception {
        fake = FakeAuth2.start();
        alice = Tokens.newToken();
        bob = Tokens.newToken();
        fake.addToken(alice, "alice");
        fake.addToken(bob, "bob");
    }

    @AfterClass
    public static void stopFake() {
        fake.close();
    }

    private static KBaseAuthServerInterceptor interceptor(String... extra) {
        Map<String, String> settings = new LinkedHashMap<>();
        settings.put("spark.kbase.auth.url", fake.url);
        settings.put("spark.kbase.auth.owner", "alice");
        for (int n = 0; n < extra.length; n += 2) {
            settings.put(extra[n], extra[n + 1]);
        }
        return new KBaseAuthServerInterceptor(settings);
    }

    /** One call whose metadata holds {@code key: value} for each pair, in order (keys may repeat). */
    private static RecordingServerCall call(KBaseAuthServerInterceptor i, Object... pairs) {
        Metadata headers = new Metadata();
        for (int n = 0; n < pairs.length; n += 2) {
            @SuppressWarnings("unchecked")
            Metadata.Key<String> key = (Metadata.Key<String>) pairs[n];
            headers.put(key, (String) pairs[n + 1]);
        }
        RecordingServerCall call = new RecordingServerCall();
        i.interceptCall(call, headers, new RecordingHandler());
        return call;
    }

    private static Status.Code code(RecordingServerCall call) {
        return call.status() == null ? Status.Code.OK : call.status().getCode();
    }

    @Test
    public void repeatedTokenHeadersWithDifferentValuesAreAmbiguousInEitherOrder() {
        KBaseAuthServerInterceptor i = interceptor();
        try {
            assertEquals(Status.Code.OK, code(call(i, AUTHORIZATION, "Bearer " + alice)));
            for (String[] order : List.of(new String[] {alice, bob}, new String[] {bob, alice})) {
                RecordingServerCall c = call(i, AUTHORIZATION, "Bearer " + order[0], AUTHORIZATION, "Bearer " + order[1]);
                assertEquals(Status.Code.UNAUTHENTICATED, code(c));
                assertThat(c.status().getDescription(), containsString("ambiguous"));
                c = call(i, KBASE_TOKEN, order[0], KBASE_TOKEN, order[1]);
                assertEquals(Status.Code.UNAUTHENTICATED, code(c));
            }
            // The owner's token repeated, in both headers, three times: fine.
            assertEquals(Status.Code.OK,
                    code(call(i, AUTHORIZATION, "Bearer " + alice, KBASE_TOKEN, alice, AUTHORIZATION, "Bearer " + alice)));
        } finally {
            i.close();
        }
    }

    @Test
    public void startUpLineNamesTheVersionAndWarningsGoToWarn() {
        try (LogCapture log = new LogCapture()) {
            interceptor(KBaseAuthServerInterceptor.INTERCEPTORS_KEY,
                    "us.kbase.spark.KBaseAuthServerInterceptor," + LOGGING_INTERCEPTOR).close();
            String text = log.text();
            assertThat(text, containsString("INFO us.kbase.spark.KBaseAuthServerInterceptor - KBase auth 0.1.0: url="));
            assertThat(text, containsString("WARN us.kbase.spark.KBaseAuthServerInterceptor - KBase auth: interceptor order: "
                    + LOGGING_INTERCEPTOR));
        }
        try (LogCapture log = new LogCapture()) {
            interceptor(KBaseAuthServerInterceptor.INTERCEPTORS_KEY,
                    LOGGING_INTERCEPTOR + ",us.kbase.spark.KBaseAuthServerInterceptor").close();
            assertThat(log.text(), not(containsString("WARN")));
        }
    }

    @Test
    public void aStaleAllowLogsOneWarningAndLetsTheCallThrough() throws Exception {
        String t = Tokens.newToken();
        fake.addToken(t, "alice", 3_600_000L, "Used", List.of(), 1_000L);
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.cache.staleIfError", "1m",
                "spark.kbase.auth.cache.refreshAhead", "0ms");
        try (LogCapture log = new LogCapture()) {
            assertEquals(Status.Code.OK, code(call(i, KBASE_TOKEN, t)));
            fake.fault("refuse");
            Thread.sleep(1_200); // the 1 s entry ends
            for (int n = 0; n < 5; n++) {
                assertEquals(Status.Code.OK, code(call(i, KBASE_TOKEN, t)));
            }
            String text = log.text();
            int warnings = text.split("WARN .*allowing token=sha256:", -1).length - 1;
            assertEquals(text, 1, warnings);
            assertThat(text, not(containsString(t)));
            assertEquals(5L, (long) i.metrics().get("staleAllows"));
        } finally {
            fake.fault("none");
            i.close();
        }
    }

    @Test
    public void aFloodOfDenialsWritesABoundedLog() throws Exception {
        KBaseAuthServerInterceptor i = interceptor();
        try (LogCapture log = new LogCapture()) {
            long started = System.nanoTime();
            for (int n = 0; n < 2_000; n++) {
                call(i, KBASE_TOKEN, "bad token " + n);
            }
            long seconds = (System.nanoTime() - started) / 1_000_000_000L + 1;
            long lines = log.text().lines().filter(l -> l.contains("KBase auth denied call")).count();
            // Windows of one second: the loop touched at most seconds + 1 of them.
            assertTrue(lines + " lines in " + seconds + " s", lines >= 1 && lines <= 10 * (seconds + 1));
            assertEquals(2_000L, (long) i.metrics().get("denied.malformed_token"));
        } finally {
            i.close();
        }
    }
}
