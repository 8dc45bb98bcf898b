package us.kbase.spark.bench;

import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.List;
import java.util.Locale;

import org.apache.logging.log4j.Level;
import org.apache.logging.log4j.core.config.Configurator;
import org.sparkproject.connect.grpc.Metadata;

import us.kbase.spark.KBaseAuthServerInterceptor;
import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;

/**
 * Soak of the whole {@code interceptCall} in a JVM: 10^6 decisions, one in four with a token
 * never seen before (a cache miss, an Auth2 request, a denial), the rest the owner's cached
 * token. Resident memory and the thread count must stay flat once the cache is full; run under
 * {@code -Xcheck:jni}, which reports leaked local references. Exits non-zero on failure.
 *
 * <p>Run: {@code gradle --offline soak} (about two minutes).
 */
public final class Soak {

    private static final int TOTAL = Integer.getInteger("soak.decisions", 1_000_000);
    private static final long MAX_GROWTH_KIB = 32 * 1024;
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);

    private Soak() {
    }

    private static long rssKib() throws Exception {
        for (String line : Files.readAllLines(Paths.get("/proc/self/status"))) {
            if (line.startsWith("VmRSS:")) {
                return Long.parseLong(line.replaceAll("[^0-9]", ""));
            }
        }
        throw new IllegalStateException("no VmRSS in /proc/self/status");
    }

    private static long threads() throws Exception {
        try (var s = Files.list(Paths.get("/proc/self/task"))) {
            return s.count();
        }
    }

    public static void main(String[] args) throws Exception {
        // One INFO line per denial is right for a server, not for 250,000 denials in a loop.
        Configurator.setLevel("us.kbase.spark", Level.WARN);
        try (FakeAuth2 fake = FakeAuth2.start()) {
            String owner = Tokens.newToken();
            fake.addToken(owner, "alice", 3_600_000L, "Used", List.of(), 3_600_000L);
            System.setProperty("spark.kbase.auth.url", fake.url);
            System.setProperty("spark.kbase.auth.owner", "alice");
            System.setProperty("spark.kbase.auth.cache.maxEntries", "10000");
            KBaseAuthServerInterceptor interceptor = new KBaseAuthServerInterceptor();
            Metadata ownerHeaders = new Metadata();
            ownerHeaders.put(KBASE_TOKEN, owner);
            RecordingServerCall call = new RecordingServerCall();
            InterceptBench.CountingHandler handler = new InterceptBench.CountingHandler();

            int checkpoint = TOTAL / 2;
            long rssMid = 0;
            long threadsMid = 0;
            long started = System.nanoTime();
            for (int i = 0; i < TOTAL; i++) {
                if (i % 4 == 0) {
                    Metadata rotating = new Metadata();
                    rotating.put(KBASE_TOKEN, String.format(Locale.ROOT, "SOAK%028d", i));
                    interceptor.interceptCall(call, rotating, handler);
                } else {
                    interceptor.interceptCall(call, ownerHeaders, handler);
                }
                if (i + 1 == checkpoint) {
                    System.gc();
                    rssMid = rssKib();
                    threadsMid = threads();
                }
            }
            System.gc();
            long rssEnd = rssKib();
            long threadsEnd = threads();
            double seconds = (System.nanoTime() - started) / 1e9;
            System.out.printf(Locale.ROOT,
                    "soak: %,d decisions in %.1f s; allowed %,d, denied %,d; RSS %,d KiB at %,d -> %,d KiB at %,d (%+,d KiB); "
                            + "threads %d -> %d; Auth2 requests %,d%n",
                    TOTAL, seconds, handler.reached, call.closeCount(), rssMid, checkpoint, rssEnd, TOTAL,
                    rssEnd - rssMid, threadsMid, threadsEnd, fake.totalRequests());
            boolean ok = handler.reached == TOTAL - TOTAL / 4 && call.closeCount() == TOTAL / 4
                    && rssEnd - rssMid <= MAX_GROWTH_KIB && threadsEnd == threadsMid;
            if (!ok) {
                System.out.println("SOAK FAILED: expected flat RSS (<= " + MAX_GROWTH_KIB + " KiB growth), "
                        + "the same thread count, and every owner call allowed / every rotating token denied");
                System.exit(1);
            }
            System.out.println("SOAK OK");
        }
    }
}
