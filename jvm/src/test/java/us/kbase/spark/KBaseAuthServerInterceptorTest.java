package us.kbase.spark;

import static org.hamcrest.CoreMatchers.containsString;
import static org.hamcrest.CoreMatchers.either;
import static org.hamcrest.CoreMatchers.not;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.junit.After;
import org.junit.BeforeClass;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.Timeout;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.Status;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.LogCapture;
import us.kbase.spark.testing.RecordingHandler;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;

/** The shim driven through {@code interceptCall}, against the fake Auth2 in a subprocess. */
public class KBaseAuthServerInterceptorTest {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> SENTINEL =
            Metadata.Key.of("x-request-sentinel", Metadata.ASCII_STRING_MARSHALLER);

    private static final FakeAuth2 fake = FakeAuth2.shared();
    /** Every token a test used: none may show up in logs, statuses, trailers or toString(). */
    private static final List<String> SECRETS = new ArrayList<>();
    private static String aliceToken;
    private static String bobToken;

    @Rule
    public final Timeout timeout = Timeout.seconds(120);

    private final List<KBaseAuthServerInterceptor> created = new ArrayList<>();

    @BeforeClass
    public static void registerTokens() throws Exception {
        aliceToken = token("alice");
        bobToken = token("bob");
    }

    @After
    public void closeInterceptors() throws Exception {
        for (KBaseAuthServerInterceptor i : created) {
            i.close();
        }
        fake.fault("none");
    }

    /** A fresh token registered for {@code user}, remembered as a secret. */
    private static String token(String user) throws Exception {
        String t = Tokens.newToken();
        fake.addToken(t, user);
        SECRETS.add(t);
        return t;
    }

    private static String unregisteredToken() {
        String t = Tokens.newToken();
        SECRETS.add(t);
        return t;
    }

    static Map<String, String> settings(String... extra) {
        Map<String, String> s = new LinkedHashMap<>();
        s.put("spark.kbase.auth.url", fake.url);
        s.put("spark.kbase.auth.owner", "alice");
        for (int i = 0; i < extra.length; i += 2) {
            if (extra[i + 1] == null) {
                s.remove(extra[i]);
            } else {
                s.put(extra[i], extra[i + 1]);
            }
        }
        return s;
    }

    private KBaseAuthServerInterceptor interceptor(String... extra) {
        KBaseAuthServerInterceptor i = new KBaseAuthServerInterceptor(settings(extra));
        created.add(i);
        return i;
    }

    /** One intercepted call and what became of it. */
    static final class Outcome {
        final RecordingServerCall call;
        final RecordingHandler handler;
        final Metadata headers;
        final ServerCall.Listener<Object> listener;

        Outcome(RecordingServerCall call, RecordingHandler handler, Metadata headers, ServerCall.Listener<Object> l) {
            this.call = call;
            this.handler = handler;
            this.headers = headers;
            this.listener = l;
        }

        boolean allowed() {
            return handler.reached() == 1 && call.closeCount() == 0;
        }

        Status.Code code() {
            return call.status() == null ? null : call.status().getCode();
        }

        String description() {
            return call.status() == null ? null : call.status().getDescription();
        }
    }

    static Outcome call(KBaseAuthServerInterceptor interceptor, String authorization, String kbaseToken) {
        Metadata headers = new Metadata();
        headers.put(SENTINEL, "request-only");
        if (authorization != null) {
            headers.put(AUTHORIZATION, authorization);
        }
        if (kbaseToken != null) {
            headers.put(KBASE_TOKEN, kbaseToken);
        }
        RecordingServerCall call = new RecordingServerCall();
        RecordingHandler handler = new RecordingHandler();
        ServerCall.Listener<Object> listener = interceptor.interceptCall(call, headers, handler);
        Outcome o = new Outcome(call, handler, headers, listener);
        if (!o.allowed()) {
            assertDeniedProperly(o);
        }
        return o;
    }

    /** A denial: closed once, handler not reached, fresh empty trailers, no secret in the status. */
    private static void assertDeniedProperly(Outcome o) {
        assertEquals("handler must not be reached on a denial", 0, o.handler.reached());
        assertEquals("closed exactly once", 1, o.call.closeCount());
        assertNotNull(o.listener);
        assertNotSame(RecordingHandler.LISTENER, o.listener);
        Metadata trailers = o.call.trailers();
        assertNotNull("trailers", trailers);
        assertNotSame("trailers must not be the request headers", o.headers, trailers);
        assertTrue("trailers must be empty, got " + trailers.keys(), trailers.keys().isEmpty());
        assertFalse(trailers.containsKey(SENTINEL));
        assertNoSecret("status description", o.description());
    }

    static void assertNoSecret(String where, String text) {
        if (text == null) {
            return;
        }
        for (String s : SECRETS) {
            assertFalse(where + " contains a token: " + text, text.contains(s));
        }
    }

    // ------------------------------------------------------------------------------------------

    @Test
    public void allowsOwnerWithBearerToken() {
        Outcome o = call(interceptor(), "Bearer " + aliceToken, null);
        assertTrue(o.allowed());
        // The user-context rewrite (the default; UserContextRewriteTest) stands in front of the next listener.
        assertNotSame(RecordingHandler.LISTENER, o.listener);
        assertSame(RecordingHandler.LISTENER, call(interceptor("spark.kbase.auth.userContext", "off"),
                "Bearer " + aliceToken, null).listener);
    }

    @Test
    public void allowsOwnerWithKBaseTokenHeader() {
        assertTrue(call(interceptor(), null, aliceToken).allowed());
    }

    @Test
    public void allowsBothHeadersWhenEqual() {
        assertTrue(call(interceptor(), "Bearer " + aliceToken, aliceToken).allowed());
    }

    @Test
    public void noTokenIsUnauthenticatedAndSaysHowToSendOne() {
        Outcome o = call(interceptor(), null, null);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
        assertThat(o.description(), either(containsString("token=")).or(containsString("x-kbase-token")));
    }

    @Test
    public void malformedTokenIsUnauthenticatedWithoutAskingAuth2() throws Exception {
        String bad = "AAAA" + unregisteredToken() + " tail";
        SECRETS.add(bad);
        long before = fake.totalRequests();
        Outcome o = call(interceptor(), "Bearer " + bad, null);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
        Outcome control = call(interceptor(), null, "x\u0001y");
        assertEquals(Status.Code.UNAUTHENTICATED, control.code());
        assertEquals("malformed tokens must not reach Auth2", before, fake.totalRequests());
    }

    /**
     * Header values cross JNI exactly, as the bytes gRPC received: UTF-8 (a 4-byte character
     * included), bytes that are not UTF-8, and very long values. Called on {@link NativeAuth}
     * directly, because a client's gRPC library may refuse to send such values.
     */
    @Test
    public void headerBytesCrossJniExactly() throws Exception {
        long h = NativeAuth.create(KBaseAuthServerInterceptor.keysAndValues(settings()));
        try {
            String nonAscii = "t\u00f6k\u00e9n\ud83d\ude00" + unregisteredToken();
            SECRETS.add(nonAscii);
            // The same non-ASCII token in both headers is one token, not an ambiguity...
            assertEquals(16, NativeAuth.authorize(h, utf8("Bearer " + nonAscii), null, utf8(nonAscii), null, null));
            assertThat(NativeAuth.denialMessage(), containsString("invalid or revoked"));
            // ...and one character apart (U+00E9 vs U+00E8) is.
            assertEquals(16, NativeAuth.authorize(h, utf8("Bearer " + nonAscii), null,
                    utf8(nonAscii.replace('\u00e9', '\u00e8')), null, null));
            assertThat(NativeAuth.denialMessage(), containsString("ambiguous"));
            // Non-ASCII white space, C1 controls and NUL are seen as such.
            for (String bad : new String[] {"abc\u00a0def", "abc\u0085def", "a\u0000b"}) {
                assertEquals(16, NativeAuth.authorize(h, null, null, utf8(bad), null, null));
                assertThat(NativeAuth.denialMessage(), containsString("spaces or control characters"));
            }
            // Bytes that are not UTF-8 are not a token either, and are not sent to Auth2.
            long before = fake.totalRequests();
            assertEquals(16, NativeAuth.authorize(h, null, null, new byte[] {'a', (byte) 0xff, 'b'}, null, null));
            assertEquals(before, fake.totalRequests());
            // Long values: one past the limit is refused; a 2000-character token goes to Auth2.
            StringBuilder x = new StringBuilder();
            for (int i = 0; i < 4097; i++) {
                x.append('x');
            }
            assertEquals(16, NativeAuth.authorize(h, utf8("Bearer " + x), null, null, null, null));
            assertThat(NativeAuth.denialMessage(), containsString("longer than 4096 bytes"));
            before = fake.totalRequests();
            assertEquals(16, NativeAuth.authorize(h, null, null, utf8(x.substring(0, 2000)), null, null));
            assertThat(NativeAuth.denialMessage(), containsString("invalid or revoked"));
            assertEquals(before + 1, fake.totalRequests());
        } finally {
            NativeAuth.destroy(h);
        }
    }

    private static byte[] utf8(String s) {
        return s.getBytes(java.nio.charset.StandardCharsets.UTF_8);
    }

    @Test
    public void differingHeadersAreAmbiguous() {
        Outcome o = call(interceptor(), "Bearer " + aliceToken, bobToken);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
        assertThat(o.description(), not(containsString("alice")));
    }

    @Test
    public void invalidTokenIsUnauthenticated() {
        Outcome o = call(interceptor(), "Bearer " + unregisteredToken(), null);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
    }

    @Test
    public void revokedTokenIsUnauthenticated() throws Exception {
        String t = token("alice");
        fake.revoke(t);
        assertEquals(Status.Code.UNAUTHENTICATED, call(interceptor(), "Bearer " + t, null).code());
    }

    @Test
    public void otherUserIsPermissionDeniedNamingBothUsers() {
        Outcome o = call(interceptor(), "Bearer " + bobToken, null);
        assertEquals(Status.Code.PERMISSION_DENIED, o.code());
        assertThat(o.description(), containsString("bob"));
        assertThat(o.description(), containsString("alice"));
    }

    @Test
    public void allowedUsersAdmitAnotherUser() {
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.allowedUsers", "bob,carol");
        assertTrue(call(i, "Bearer " + bobToken, null).allowed());
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
    }

    @Test
    public void auth2DownIsUnavailableAndLoggedAtWarn() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.connectTimeout", "2s",
                "spark.kbase.auth.requestTimeout", "3s");
        String t = token("alice");
        fake.fault("refuse");
        try (LogCapture log = new LogCapture()) {
            Outcome o = call(i, "Bearer " + t, null);
            assertEquals(Status.Code.UNAVAILABLE, o.code());
            assertThat(log.text(), containsString("WARN us.kbase.spark.KBaseAuthServerInterceptor"));
            assertNoSecret("log", log.text());
        }
        fake.fault("none");
        assertTrue("a transport failure must not be cached", call(i, "Bearer " + t, null).allowed());
    }

    @Test
    public void auth2ErrorsAreUnavailable() throws Exception {
        KBaseAuthServerInterceptor i = interceptor();
        long redirected = fake.redirectedRequests();
        for (String mode : new String[] {"status503", "html502", "malformed", "nouser", "status400html",
                "status400json", "drop_token", "redirect"}) {
            fake.fault(mode);
            Outcome o = call(i, "Bearer " + token("alice"), null);
            assertEquals("fault " + mode, Status.Code.UNAVAILABLE, o.code());
        }
        assertEquals("a redirect must not be followed", redirected, fake.redirectedRequests());
    }

    @Test
    public void expiredTokenIsDeniedEvenWhenAuth2AcceptsIt() throws Exception {
        String t = Tokens.newToken();
        SECRETS.add(t);
        fake.addToken(t, "alice", -60_000, "Used", List.of(), 300_000);
        fake.fault("ignore_expiry");
        Outcome o = call(interceptor(), "Bearer " + t, null);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
        assertThat(o.description().toLowerCase(), containsString("expired"));
    }

    @Test
    public void tokenExpiringWhileCachedIsDenied() throws Exception {
        String t = Tokens.newToken();
        SECRETS.add(t);
        fake.addToken(t, "alice", 1500, "Used", List.of(), 300_000);
        // An Auth2 that keeps answering 200 after the expiry: only the plugin's own expiry check
        // can deny the call (a well-behaved Auth2 would answer 401 and hide a missing check).
        fake.fault("ignore_expiry");
        KBaseAuthServerInterceptor i = interceptor();
        assertTrue(call(i, "Bearer " + t, null).allowed());
        assertTrue("a cache hit", call(i, "Bearer " + t, null).allowed());
        assertEquals(1, fake.requestsFor(t));
        Outcome o = untilDenied(i, "Bearer " + t, 10_000);
        assertEquals(Status.Code.UNAUTHENTICATED, o.code());
        assertThat(o.description(), containsString("KBase token expired at "));
        // And it stays denied: the expired answer is not turned into an allow later.
        assertEquals(Status.Code.UNAUTHENTICATED, call(i, "Bearer " + t, null).code());
    }

    /** Calls until a call is denied (bounded): for states that arrive with time, without guessing a sleep. */
    private static Outcome untilDenied(KBaseAuthServerInterceptor i, String authorization, long limitMs)
            throws InterruptedException {
        long deadline = System.nanoTime() + limitMs * 1_000_000L;
        while (true) {
            Outcome o = call(i, authorization, null);
            if (!o.allowed()) {
                return o;
            }
            if (System.nanoTime() > deadline) {
                fail("still allowed after " + limitMs + " ms");
            }
            Thread.sleep(25);
        }
    }

    @Test
    public void deniedTrailersAreFreshAndEmpty() {
        KBaseAuthServerInterceptor i = interceptor();
        // call() checks trailers on every denial; cover each status the shim produces.
        assertEquals(Status.Code.UNAUTHENTICATED, call(i, null, null).code());
        assertEquals(Status.Code.PERMISSION_DENIED, call(i, "Bearer " + bobToken, null).code());
        i.close();
        created.remove(i);
        Outcome o = call(i, "Bearer " + aliceToken, null);
        assertEquals(Status.Code.INTERNAL, o.code());
    }

    /**
     * The shim's own unexpected failure (here: use after {@code close()}) is the one case logged at
     * ERROR, with the stack trace; the caller gets the generic INTERNAL message.
     */
    @Test
    public void shimFailureIsInternalNeverAllowAndLoggedAtErrorWithStackTrace() {
        KBaseAuthServerInterceptor i = interceptor();
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
        i.close();
        created.remove(i);
        i.close(); // idempotent
        try (LogCapture log = new LogCapture()) {
            Outcome o = call(i, "Bearer " + aliceToken, null);
            assertEquals(Status.Code.INTERNAL, o.code());
            assertEquals(KBaseAuthServerInterceptor.INTERNAL_ERROR_MESSAGE, o.description());
            assertThat(log.text(), containsString("ERROR us.kbase.spark.KBaseAuthServerInterceptor"));
            assertThat(log.text(), containsString("java.lang.IllegalStateException: interceptor used after close()"));
            assertThat(log.text(), containsString("\tat us.kbase.spark.KBaseAuthServerInterceptor.interceptCall"));
        }
    }

    /**
     * An INTERNAL decided by the native side (here: a null authenticator handle, which the native
     * code refuses) is a denial like UNAVAILABLE: one WARN line with status and reason, no ERROR,
     * no stack trace (README, Decisions; SPEC section 4).
     */
    @Test
    public void nativeInternalDenialIsLoggedAtWarn() throws Exception {
        KBaseAuthServerInterceptor i = interceptor();
        java.lang.reflect.Field handle = KBaseAuthServerInterceptor.class.getDeclaredField("handle");
        handle.setAccessible(true);
        long real = handle.getLong(i);
        handle.setLong(i, 0L);
        try (LogCapture log = new LogCapture()) {
            Outcome o = call(i, "Bearer " + aliceToken, null);
            assertEquals(Status.Code.INTERNAL, o.code());
            assertEquals(KBaseAuthServerInterceptor.INTERNAL_ERROR_MESSAGE, o.description());
            List<String> lines = interceptorLines(log.text());
            assertEquals("one line for the denial: " + lines, 1, lines.size());
            assertThat(lines.get(0), containsString("WARN us.kbase.spark.KBaseAuthServerInterceptor"));
            assertThat(lines.get(0), containsString("status=INTERNAL reason=internal_error"));
            assertThat(log.text(), not(containsString("ERROR")));
            assertThat(log.text(), not(containsString("\tat ")));
        } finally {
            handle.setLong(i, real);
        }
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
    }

    /** The captured lines logged by the interceptor's logger. */
    private static List<String> interceptorLines(String text) {
        List<String> lines = new ArrayList<>();
        for (String line : text.split("\n")) {
            if (line.contains(" us.kbase.spark.KBaseAuthServerInterceptor - ")) {
                lines.add(line);
            }
        }
        return lines;
    }

    @Test
    public void noTokenInLogsStatusesOrToString() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.cache.invalidTtl", "5s");
        try (LogCapture log = new LogCapture()) {
            KBaseAuthServerInterceptor j = interceptor();
            call(j, "Bearer " + aliceToken, null);
            call(i, "Bearer " + aliceToken, null);
            call(i, "Bearer " + bobToken, null);
            call(i, "Bearer " + unregisteredToken(), null);
            call(i, "Bearer " + aliceToken, bobToken);
            call(i, "bearer " + aliceToken + "\t", null);
            call(i, "Basic " + aliceToken, null);
            call(i, "Bearer " + aliceToken + " " + bobToken, null);
            fake.fault("refuse");
            call(i, "Bearer " + token("alice"), null);
            fake.fault("malformed");
            call(i, "Bearer " + token("alice"), null);
            fake.fault("none");
            String text = log.text();
            assertThat(text, containsString("owner=alice"));
            assertNoSecret("log", text);
            assertNoSecret("toString", i.toString());
            assertNoSecret("metrics", i.metrics().toString());
        }
    }

    @Test
    public void denialsAreLoggedOnceWithReasonAtInfo() throws Exception {
        KBaseAuthServerInterceptor i = interceptor();
        try (LogCapture log = new LogCapture()) {
            call(i, "Bearer " + bobToken, null);
            call(i, "Bearer " + aliceToken, null);
            List<String> lines = interceptorLines(log.text());
            assertEquals("one line for the denial, none for the allow: " + lines, 1, lines.size());
            String line = lines.get(0);
            assertThat(line, containsString("INFO us.kbase.spark.KBaseAuthServerInterceptor"));
            assertThat(line, containsString("status=PERMISSION_DENIED reason=user_not_allowed"));
            assertThat(line, containsString("token=sha256:" + Tokens.fingerprint(bobToken)));
            assertThat(line, containsString("'bob'"));
            assertThat(line, not(containsString(Tokens.fingerprint(aliceToken))));
            assertNoSecret("log", line);
        }
    }

    @Test
    public void toStringShowsClassAndSettingsOnly() {
        KBaseAuthServerInterceptor i = interceptor();
        String s = i.toString();
        assertTrue(s, s.startsWith("KBaseAuthServerInterceptor["));
        assertThat(s, containsString("alice"));
        assertNoSecret("toString", s);
    }

    // ---- configuration ------------------------------------------------------------------------

    private static IllegalArgumentException badConfig(Map<String, String> settings) {
        try {
            new KBaseAuthServerInterceptor(settings).close();
        } catch (IllegalArgumentException e) {
            assertNoSecret("config error", e.getMessage());
            return e;
        }
        fail("accepted bad settings " + settings);
        return null;
    }

    @Test
    public void badUrlIsRejectedNamingTheKey() {
        IllegalArgumentException e = badConfig(settings("spark.kbase.auth.url", "::not a url"));
        assertThat(e.getMessage(), containsString("spark.kbase.auth.url"));
    }

    @Test
    public void badDurationsAreRejectedNamingTheKey() {
        for (String[] kv : new String[][] {
                {"spark.kbase.auth.cache.maxTtl", "-5m"},
                {"spark.kbase.auth.cache.maxTtl", "5"},
                {"spark.kbase.auth.cache.invalidTtl", "soon"},
                {"spark.kbase.auth.connectTimeout", "-1s"},
                {"spark.kbase.auth.requestTimeout", "0x10s"}}) {
            IllegalArgumentException e = badConfig(settings(kv[0], kv[1]));
            assertThat(e.getMessage(), containsString(kv[0]));
        }
    }

    @Test
    public void noOwnerRefusesToStart() {
        IllegalArgumentException e = badConfig(settings("spark.kbase.auth.owner", null));
        assertThat(e.getMessage(), either(containsString("spark.kbase.auth.owner")).or(containsString("USER")));
    }

    @Test
    public void envStyleKeysAreAccepted() {
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.url", null, "spark.kbase.auth.owner", null,
                "KBASE_AUTH_URL", fake.url, "USER", "alice");
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
        assertEquals(Status.Code.PERMISSION_DENIED, call(i, "Bearer " + bobToken, null).code());
    }

    @Test
    public void sparkKeysWinOverEnvironment() {
        KBaseAuthServerInterceptor i = interceptor("USER", "bob", "KBASE_AUTH_URL", "http://127.0.0.1:9/");
        // The URL from the environment (nothing listens there) is ignored: Auth2 answers.
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
        // USER=bob is ignored: bob is not the owner, alice (from spark.kbase.auth.owner) is.
        Outcome o = call(i, "Bearer " + bobToken, null);
        assertEquals(Status.Code.PERMISSION_DENIED, o.code());
        assertThat(o.description(), containsString("'bob'"));
        assertThat(o.description(), containsString("'alice'"));
        assertThat(i.toString(), containsString("owner=alice"));
    }

    @Test
    public void gatherSettingsTakesPrefixedEntriesTwoEnvironmentVariablesAndTheWarningInputs() {
        Map<String, String> spark = new LinkedHashMap<>();
        spark.put("spark.kbase.auth.url", "https://x/");
        spark.put("spark.master", "local");
        spark.put("spark.kbase.authx", "no");
        spark.put("spark.connect.grpc.interceptor.classes", "a.B,c.D");
        Map<String, String> env = new HashMap<>();
        env.put("USER", "alice");
        env.put("KBASE_AUTH_URL", "https://y/");
        env.put("HOME", "/root");
        Map<String, String> expected = new LinkedHashMap<>();
        expected.put("spark.kbase.auth.url", "https://x/");
        expected.put("spark.connect.grpc.interceptor.classes", "a.B,c.D");
        expected.put("KBASE_AUTH_URL", "https://y/");
        expected.put("USER", "alice");
        expected.put("user.name", System.getProperty("user.name"));
        assertEquals(expected, KBaseAuthServerInterceptor.gatherSettings(spark, env));
    }

    @Test
    public void publicConstructorReadsSystemPropertiesOutsideSpark() {
        assertNull("no SparkEnv in unit tests", org.apache.spark.SparkEnv.get());
        System.setProperty("spark.kbase.auth.url", fake.url);
        System.setProperty("spark.kbase.auth.owner", "alice");
        try {
            KBaseAuthServerInterceptor i = new KBaseAuthServerInterceptor();
            created.add(i);
            assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
            assertEquals(Status.Code.PERMISSION_DENIED, call(i, "Bearer " + bobToken, null).code());
        } finally {
            System.clearProperty("spark.kbase.auth.url");
            System.clearProperty("spark.kbase.auth.owner");
        }
    }

    // ---- boundary -----------------------------------------------------------------------------

    @Test
    public void panicInNativeCodeBecomesInternalAndTheJvmSurvives() {
        KBaseAuthServerInterceptor i = interceptor();
        for (int n = 0; n < 3; n++) {
            assertEquals(NativeAuth.INTERNAL, NativeAuth.panicProbe());
        }
        assertTrue(call(i, "Bearer " + aliceToken, null).allowed());
    }

    @Test
    public void peerAddressIsIgnoredUnlessConfigured() {
        KBaseAuthServerInterceptor i = interceptor();
        RecordingServerCall call = new RecordingServerCall(new InetSocketAddress("127.0.0.1", 1234));
        RecordingHandler handler = new RecordingHandler();
        i.interceptCall(call, new Metadata(), handler);
        assertEquals(0, handler.reached());
        assertEquals(Status.Code.UNAUTHENTICATED, call.status().getCode());
    }

    @Test
    public void trustedAddressesLetTokenlessCallsThroughFromThoseAddressesOnly() {
        KBaseAuthServerInterceptor i = interceptor("spark.kbase.auth.trustedAddresses", "127.0.0.1, ::1");
        RecordingHandler handler = new RecordingHandler();
        RecordingServerCall loopback = new RecordingServerCall(new InetSocketAddress("127.0.0.1", 1234));
        i.interceptCall(loopback, new Metadata(), handler);
        assertEquals(1, handler.reached());
        RecordingServerCall v6 = new RecordingServerCall(new InetSocketAddress("::1", 1234));
        i.interceptCall(v6, new Metadata(), handler);
        assertEquals(2, handler.reached());
        // A documentation address (TEST-NET-1): only a value here, nothing is sent to it.
        RecordingServerCall other = new RecordingServerCall(new InetSocketAddress("192.0.2.7", 1234));
        i.interceptCall(other, new Metadata(), handler);
        assertEquals(2, handler.reached());
        assertEquals(Status.Code.UNAUTHENTICATED, other.status().getCode());
        // A token that is sent is still checked, whatever the source.
        RecordingServerCall withBadToken = new RecordingServerCall(new InetSocketAddress("127.0.0.1", 1234));
        Metadata headers = new Metadata();
        headers.put(AUTHORIZATION, "Bearer " + bobToken);
        i.interceptCall(withBadToken, headers, handler);
        assertEquals(Status.Code.PERMISSION_DENIED, withBadToken.status().getCode());
    }

    @Test
    public void manyThreadsAtOnce() throws Exception {
        String t = token("alice");
        KBaseAuthServerInterceptor i = interceptor();
        int threads = 16;
        int calls = 1000;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        CountDownLatch start = new CountDownLatch(1);
        RecordingHandler handler = new RecordingHandler();
        List<Future<Integer>> results = new ArrayList<>();
        try {
            for (int n = 0; n < threads; n++) {
                results.add(pool.submit((Callable<Integer>) () -> {
                    start.await();
                    int closed = 0;
                    for (int c = 0; c < calls; c++) {
                        Metadata headers = new Metadata();
                        headers.put(AUTHORIZATION, "Bearer " + t);
                        RecordingServerCall call = new RecordingServerCall();
                        i.interceptCall(call, headers, handler);
                        closed += call.closeCount();
                    }
                    return closed;
                }));
            }
            start.countDown();
            for (Future<Integer> f : results) {
                assertEquals("no call may be denied", Integer.valueOf(0), f.get(60, TimeUnit.SECONDS));
            }
        } finally {
            pool.shutdownNow();
        }
        assertEquals((long) threads * calls, handler.reached());
        assertEquals("concurrent first calls share one Auth2 request", 1, fake.requestsFor(t));
        Map<String, Long> metrics = i.metrics();
        assertEquals(metrics.toString(), (long) threads * calls, (long) metrics.get("allowed"));
        assertEquals(metrics.toString(), 1, (long) metrics.get("auth2Requests"));
    }
}
