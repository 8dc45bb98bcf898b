package us.kbase.spark.bench;

import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;

import us.kbase.spark.JniFloorInterceptor;
import us.kbase.spark.KBaseAuthServerInterceptor;
import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;

/**
 * Microbenchmark of the cache-hit {@code interceptCall} (the JNI crossing included) against a
 * plain-Java cached interceptor and against a floor that only reads the two headers, all driven
 * by the same harness. No JMH here (Maven Central is out of reach): warm-up, then timed batches.
 *
 * <p>System properties: {@code bench.warmup} (calls, default 2,000,000), {@code bench.batch}
 * (calls per timed batch, 1000), {@code bench.batches} (per subject, 3000), {@code bench.samples}
 * (individually timed calls, 200,000), {@code bench.seconds} (per throughput run, 2),
 * {@code bench.threads} (comma list, "1,2,4").
 */
public final class InterceptBench {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final ServerCall.Listener<Object> LISTENER = new ServerCall.Listener<Object>() {
    };

    private static final int WARMUP = Integer.getInteger("bench.warmup", 2_000_000);
    private static final int BATCH = Integer.getInteger("bench.batch", 1000);
    private static final int BATCHES = Integer.getInteger("bench.batches", 3000);
    private static final int SAMPLES = Integer.getInteger("bench.samples", 200_000);
    private static final int SECONDS = Integer.getInteger("bench.seconds", 2);
    private static final int ALLOC_CALLS = 1_000_000;
    private static final int ROUNDS = 5;
    private static final String RUST = "Rust via JNI (this plugin)";
    private static final String JAVA = "plain-Java cache";

    private InterceptBench() {
    }

    /** The next handler: a plain per-thread counter, so the harness adds no shared writes. */
    static final class CountingHandler implements ServerCallHandler<Object, Object> {
        long reached;

        @Override
        public ServerCall.Listener<Object> startCall(ServerCall<Object, Object> call, Metadata headers) {
            reached++;
            return LISTENER;
        }
    }

    /** Reads the two headers the real interceptors read and allows: the gRPC cost no interceptor avoids. */
    private static final class HeadersOnly implements ServerInterceptor {
        @Override
        public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
                ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
            if (headers.get(AUTHORIZATION) == null && headers.get(KBASE_TOKEN) != null) {
                throw new AssertionError();
            }
            return next.startCall(call, headers);
        }
    }

    /** Per-thread call state: the request headers, the call and the handler are reused. */
    private static final class Driver {
        final ServerInterceptor interceptor;
        final Metadata headers = new Metadata();
        final RecordingServerCall call = new RecordingServerCall();
        final CountingHandler handler = new CountingHandler();

        Driver(ServerInterceptor interceptor, String token) {
            this.interceptor = interceptor;
            headers.put(AUTHORIZATION, "Bearer " + token);
        }

        /** Runs n calls; returns how many were not allowed (must be 0). */
        long run(int n) {
            long notAllowed = 0;
            for (int i = 0; i < n; i++) {
                if (interceptor.interceptCall(call, headers, handler) != LISTENER) {
                    notAllowed++;
                }
            }
            return notAllowed;
        }
    }

    private static final class Result {
        final String name;
        final double[] batchPerCall;
        final long[] singleCall;
        double bytesPerCall;
        final Map<Integer, Double> mopsByThreads = new LinkedHashMap<>();

        Result(String name, double[] batchPerCall, long[] singleCall) {
            this.name = name;
            this.batchPerCall = batchPerCall;
            this.singleCall = singleCall;
        }
    }

    public static void main(String[] args) throws Exception {
        System.out.printf(Locale.ROOT, "JVM %s %s, %d CPUs; warm-up %,d calls, %d batches x %d calls, %,d samples%n",
                System.getProperty("java.vm.name"), System.getProperty("java.version"),
                Runtime.getRuntime().availableProcessors(), WARMUP, BATCHES, BATCH, SAMPLES);
        try (FakeAuth2 fake = FakeAuth2.start()) {
            String token = Tokens.newToken();
            fake.addToken(token, "alice", 3_600_000L, "Used", List.of(), 3_600_000L);
            System.setProperty("spark.kbase.auth.url", fake.url);
            System.setProperty("spark.kbase.auth.owner", "alice");
            System.setProperty("spark.kbase.auth.cache.maxTtl", "1h");
            KBaseAuthServerInterceptor rust = new KBaseAuthServerInterceptor();
            JavaReferenceInterceptor java = new JavaReferenceInterceptor("alice");
            java.prime(token, "alice", TimeUnit.HOURS.toNanos(1));

            Map<String, ServerInterceptor> subjects = new LinkedHashMap<>();
            subjects.put("headers only (gRPC floor)", new HeadersOnly());
            JniFloorInterceptor jniFloor = new JniFloorInterceptor(fake.url);
            subjects.put("headers + empty JNI call", jniFloor);
            subjects.put(RUST, rust);
            subjects.put(JAVA, java);

            for (Map.Entry<String, ServerInterceptor> s : subjects.entrySet()) {
                Driver d = new Driver(s.getValue(), token);
                require(d.run(1) == 0 && d.handler.reached == 1, s.getKey() + " must allow the pre-warmed token");
                long t0 = System.nanoTime();
                require(d.run(WARMUP) == 0, s.getKey() + " denied during warm-up");
                System.out.printf(Locale.ROOT, "warm-up %-28s %,d calls in %.2f s%n", s.getKey(), WARMUP,
                        (System.nanoTime() - t0) / 1e9);
            }
            long authRequests = fake.requestsFor(token);

            // Latency, interleaved in rounds so drift (JIT, frequency, neighbours) hits all subjects alike.
            Map<String, List<double[]>> batches = new LinkedHashMap<>();
            Map<String, List<long[]>> singles = new LinkedHashMap<>();
            for (int round = 0; round < ROUNDS; round++) {
                for (Map.Entry<String, ServerInterceptor> s : subjects.entrySet()) {
                    Driver d = new Driver(s.getValue(), token);
                    batches.computeIfAbsent(s.getKey(), k -> new ArrayList<>()).add(timeBatches(d, BATCHES / ROUNDS));
                    singles.computeIfAbsent(s.getKey(), k -> new ArrayList<>()).add(timeSingles(d, SAMPLES / ROUNDS));
                }
            }
            List<Result> results = new ArrayList<>();
            for (Map.Entry<String, ServerInterceptor> s : subjects.entrySet()) {
                Result r = new Result(s.getKey(), concat(batches.get(s.getKey())), concatLongs(singles.get(s.getKey())));
                r.bytesPerCall = allocatedPerCall(new Driver(s.getValue(), token));
                results.add(r);
            }
            int[] threadCounts = Arrays.stream(System.getProperty("bench.threads", "1,2,4").split(","))
                    .mapToInt(x -> Integer.parseInt(x.trim())).toArray();
            for (int threads : threadCounts) {
                for (int i = 0; i < results.size(); i++) {
                    ServerInterceptor subject = subjects.get(results.get(i).name);
                    results.get(i).mopsByThreads.put(threads, throughput(subject, token, threads));
                }
            }
            require(fake.requestsFor(token) == authRequests, "the benchmark must run on cache hits only");
            long nanoTimeCost = nanoTimeCost();
            print(results, threadCounts, nanoTimeCost);
            System.out.println("Auth2 requests for the benchmark token: " + authRequests);
            System.out.println("plugin metrics: " + JniFloorInterceptor.metricsOf(rust));
            jniFloor.close();
        }
    }

    private static double[] timeBatches(Driver d, int batches) {
        double[] perCall = new double[batches];
        for (int b = 0; b < batches; b++) {
            long t0 = System.nanoTime();
            long bad = d.run(BATCH);
            long t1 = System.nanoTime();
            require(bad == 0, "denied while timing");
            perCall[b] = (t1 - t0) / (double) BATCH;
        }
        return perCall;
    }

    private static long[] timeSingles(Driver d, int samples) {
        long[] ns = new long[samples];
        for (int i = 0; i < samples; i++) {
            long t0 = System.nanoTime();
            ServerCall.Listener<Object> l = d.interceptor.interceptCall(d.call, d.headers, d.handler);
            ns[i] = System.nanoTime() - t0;
            require(l == LISTENER, "denied while timing");
        }
        return ns;
    }

    private static double allocatedPerCall(Driver d) {
        com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        d.run(10_000);
        long before = mx.getCurrentThreadAllocatedBytes();
        require(d.run(ALLOC_CALLS) == 0, "denied while measuring allocation");
        long after = mx.getCurrentThreadAllocatedBytes();
        return (after - before) / (double) ALLOC_CALLS;
    }

    /** Calls per second (millions) with {@code threads} threads for {@link #SECONDS} seconds. */
    private static double throughput(ServerInterceptor subject, String token, int threads) throws Exception {
        long[] counts = new long[threads];
        long[] failures = new long[threads];
        CountDownLatch ready = new CountDownLatch(threads);
        CountDownLatch go = new CountDownLatch(1);
        long[] window = new long[2];
        Thread[] workers = new Thread[threads];
        for (int t = 0; t < threads; t++) {
            final int id = t;
            workers[t] = new Thread(() -> {
                Driver d = new Driver(subject, token);
                d.run(100_000);
                ready.countDown();
                try {
                    go.await();
                } catch (InterruptedException e) {
                    return;
                }
                long end = window[1];
                long n = 0;
                long bad = 0;
                do {
                    bad += d.run(BATCH);
                    n += BATCH;
                } while (System.nanoTime() < end);
                counts[id] = n;
                failures[id] = bad;
            }, "bench-" + t);
            workers[t].start();
        }
        ready.await();
        window[0] = System.nanoTime();
        window[1] = window[0] + TimeUnit.SECONDS.toNanos(SECONDS);
        go.countDown();
        long total = 0;
        long lastEnd = window[1];
        for (int t = 0; t < threads; t++) {
            workers[t].join();
            total += counts[t];
            require(failures[t] == 0, "denied while measuring throughput");
        }
        lastEnd = Math.max(lastEnd, System.nanoTime());
        return total / ((lastEnd - window[0]) / 1e9) / 1e6;
    }

    private static long nanoTimeCost() {
        int n = 1_000_000;
        long sink = 0;
        long t0 = System.nanoTime();
        for (int i = 0; i < n; i++) {
            sink += System.nanoTime();
        }
        long t1 = System.nanoTime();
        if (sink == 42) {
            System.out.print("");
        }
        return (t1 - t0) / n;
    }

    private static void print(List<Result> results, int[] threadCounts, long nanoTimeCost) {
        System.out.println();
        StringBuilder head = new StringBuilder(String.format(Locale.ROOT, "%-28s %10s %10s %10s %10s %8s",
                "cache-hit interceptCall", "median ns", "p99 ns", "1-call p50", "1-call p99", "B/call"));
        for (int t : threadCounts) {
            head.append(String.format(Locale.ROOT, " %9s", t + "T Mops/s"));
        }
        System.out.println(head);
        for (Result r : results) {
            double[] b = r.batchPerCall.clone();
            Arrays.sort(b);
            long[] s = r.singleCall.clone();
            Arrays.sort(s);
            StringBuilder line = new StringBuilder(String.format(Locale.ROOT, "%-28s %10.1f %10.1f %10d %10d %8.1f",
                    r.name, pct(b, 0.5), pct(b, 0.99), pct(s, 0.5), pct(s, 0.99), r.bytesPerCall));
            for (int t : threadCounts) {
                line.append(String.format(Locale.ROOT, " %9.2f", r.mopsByThreads.get(t)));
            }
            System.out.println(line);
        }
        Result rust = results.stream().filter(r -> r.name.equals(RUST)).findFirst().orElseThrow();
        Result java = results.stream().filter(r -> r.name.equals(JAVA)).findFirst().orElseThrow();
        double[] rb = rust.batchPerCall.clone();
        double[] jb = java.batchPerCall.clone();
        Arrays.sort(rb);
        Arrays.sort(jb);
        System.out.printf(Locale.ROOT, "%nRust/Java median ratio: %.2f (target <= 1.5); Rust median %.0f ns (target <= 1000),"
                + " p99 %.0f ns (target <= 5000)%n", pct(rb, 0.5) / pct(jb, 0.5), pct(rb, 0.5), pct(rb, 0.99));
        System.out.printf(Locale.ROOT, "batch columns: per-call time of %d-call batches (timer amortized); 1-call columns:"
                + " each call timed alone, including ~%d ns of System.nanoTime%n", BATCH, nanoTimeCost);
        StringBuilder scale = new StringBuilder("thread scaling (Mops/s relative to 1 thread):");
        for (Result r : results) {
            scale.append(String.format(Locale.ROOT, "%n  %-28s", r.name));
            double one = r.mopsByThreads.get(threadCounts[0]);
            for (int t : threadCounts) {
                scale.append(String.format(Locale.ROOT, " %dT=%.2fx", t, r.mopsByThreads.get(t) / one));
            }
        }
        System.out.println(scale);
    }

    private static double pct(double[] sorted, double p) {
        return sorted[Math.min(sorted.length - 1, (int) Math.ceil(p * sorted.length) - 1)];
    }

    private static long pct(long[] sorted, double p) {
        return sorted[Math.min(sorted.length - 1, (int) Math.ceil(p * sorted.length) - 1)];
    }

    private static double[] concat(List<double[]> parts) {
        return parts.stream().flatMapToDouble(Arrays::stream).toArray();
    }

    private static long[] concatLongs(List<long[]> parts) {
        return parts.stream().flatMapToLong(Arrays::stream).toArray();
    }

    private static void require(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException(what);
        }
    }
}
