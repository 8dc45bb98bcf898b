package us.kbase.spark.bench;

import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.spark.connect.proto.ExecutePlanRequest;
import org.apache.spark.connect.proto.LocalRelation;
import org.apache.spark.connect.proto.Plan;
import org.apache.spark.connect.proto.Range;
import org.apache.spark.connect.proto.Relation;
import org.apache.spark.connect.proto.RelationCommon;
import org.apache.spark.connect.proto.UserContext;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.protobuf.ByteString;

import us.kbase.spark.JniFloorInterceptor;
import us.kbase.spark.KBaseAuthServerInterceptor;
import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;
import us.kbase.spark.testing.TransportHeaders;

/**
 * Microbenchmark of the cache-hit {@code interceptCall} (the JNI crossing included) against a
 * plain-Java cached interceptor and against a floor that only reads the two headers, all driven
 * by the same harness, interleaved. No JMH here (Maven Central is out of reach): warm-up, then
 * timed batches. Then the user-context rewrite of one request message, small and with a 10 MB
 * local relation: time and bytes allocated per message.
 *
 * <p>Each call gets its headers as gRPC's transport hands them over ({@link TransportHeaders}:
 * made from the received byte arrays, values parsed on each read), the headers pyspark 4.0
 * sends, from a ring of such instances per thread.
 *
 * <p>System properties: {@code bench.warmup} (calls, default 2,000,000), {@code bench.batch}
 * (calls per timed batch, 1000), {@code bench.batches} (per subject, 3000), {@code bench.samples}
 * (individually timed calls, 200,000), {@code bench.seconds} (per throughput run, 2),
 * {@code bench.threads} (comma list, "1,2,4"), {@code bench.ring} (metadata instances per
 * thread, a power of two, 1024), {@code bench.header} (the token header, {@code authorization}
 * or {@code x-kbase-token}), {@code bench.userContext} (the plugin's setting, {@code rewrite};
 * {@code unset} for builds before it existed), {@code bench.referenceRewrite} (whether the
 * plain-Java reference rewrites too; by default when the plugin does).
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
    private static final int RING = Integer.getInteger("bench.ring", 1024);
    private static final String HEADER = System.getProperty("bench.header", "authorization");
    private static final String USER_CONTEXT = System.getProperty("bench.userContext", "rewrite");
    private static final boolean REFERENCE_REWRITES = Boolean.parseBoolean(System.getProperty(
            "bench.referenceRewrite", String.valueOf(USER_CONTEXT.equals("rewrite") || USER_CONTEXT.equals("require"))));
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
            if (headers.get(AUTHORIZATION) == null && headers.get(KBASE_TOKEN) == null) {
                throw new AssertionError();
            }
            return next.startCall(call, headers);
        }
    }

    /** Per-thread call state: a ring of transport-made headers; the call and the handler are reused. */
    private static final class Driver {
        final ServerInterceptor interceptor;
        final Metadata[] ring = new Metadata[RING];
        final RecordingServerCall call = new RecordingServerCall();
        final CountingHandler handler = new CountingHandler();
        int next;

        Driver(ServerInterceptor interceptor, String token) {
            this.interceptor = interceptor;
            require(Integer.bitCount(RING) == 1, "bench.ring must be a power of two");
            for (int i = 0; i < RING; i++) {
                ring[i] = TransportHeaders.pyspark(HEADER, token);
            }
        }

        Metadata headers() {
            Metadata h = ring[next];
            next = (next + 1) & (RING - 1);
            return h;
        }

        /** Runs n calls; returns how many did not reach the handler (must be 0). */
        long run(int n) {
            long reached = handler.reached;
            for (int i = 0; i < n; i++) {
                interceptor.interceptCall(call, headers(), handler);
            }
            return n - (handler.reached - reached);
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
            if (!USER_CONTEXT.equals("unset")) {
                System.setProperty("spark.kbase.auth.userContext", USER_CONTEXT);
            }
            KBaseAuthServerInterceptor rust = new KBaseAuthServerInterceptor();
            JavaReferenceInterceptor java = new JavaReferenceInterceptor("alice", REFERENCE_REWRITES);
            java.prime(token, "alice", TimeUnit.HOURS.toNanos(1));
            System.out.printf(Locale.ROOT, "token header %s, ring of %d transport-made Metadata per thread, plugin "
                    + "userContext=%s, reference rewrites: %s%n", HEADER, RING, USER_CONTEXT, REFERENCE_REWRITES);

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
            System.out.println();
            messages(RUST, rust, token);
            messages(JAVA, java, token);
            jniFloor.close();
        }
    }

    /** The next handler for the message measurements: keeps the last message Spark would get. */
    private static final class CapturingHandler implements ServerCallHandler<Object, Object> {
        Object last;

        @Override
        public ServerCall.Listener<Object> startCall(ServerCall<Object, Object> call, Metadata headers) {
            return new ServerCall.Listener<Object>() {
                @Override
                public void onMessage(Object message) {
                    last = message;
                }
            };
        }
    }

    /**
     * A request as the transport hands it over (parsed from its bytes): an ExecutePlanRequest whose
     * user context names someone else, with a small plan or one carrying {@code localBytes} of
     * local relation data.
     */
    static ExecutePlanRequest executePlan(int localBytes) throws Exception {
        Relation.Builder root = Relation.newBuilder().setCommon(RelationCommon.newBuilder().setPlanId(1));
        if (localBytes == 0) {
            root.setRange(Range.newBuilder().setStart(0).setEnd(10).setStep(1));
        } else {
            byte[] data = new byte[localBytes];
            new java.util.Random(1).nextBytes(data);
            root.setLocalRelation(LocalRelation.newBuilder().setData(ByteString.copyFrom(data))
                    .setSchema("{\"type\":\"struct\",\"fields\":[]}"));
        }
        ExecutePlanRequest request = ExecutePlanRequest.newBuilder()
                .setSessionId(UUID.randomUUID().toString())
                .setUserContext(UserContext.newBuilder().setUserId("mallory"))
                .setOperationId(UUID.randomUUID().toString())
                .setClientType("_SPARK_CONNECT_PYTHON spark/4.0.0 os/linux python/3.11.2")
                .addTags("kbase-bench")
                .setPlan(Plan.newBuilder().setRoot(root))
                .build();
        return ExecutePlanRequest.parseFrom(request.toByteArray());
    }

    /**
     * The rewrite of one message on its own (the listener of one allowed call, fed the same
     * message again and again): time and bytes allocated per message, and proof that the plan,
     * and so its data, is shared rather than copied.
     */
    private static void messages(String name, ServerInterceptor subject, String token) throws Exception {
        com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        for (int size : new int[] {0, 10 << 20}) {
            ExecutePlanRequest request = executePlan(size);
            CapturingHandler handler = new CapturingHandler();
            ServerCall.Listener<Object> listener = subject.interceptCall(new RecordingServerCall(),
                    TransportHeaders.pyspark(HEADER, token), handler);
            int n = size == 0 ? 2_000_000 : 200_000;
            for (int i = 0; i < n / 4; i++) {
                listener.onMessage(request);
            }
            long bytes0 = mx.getCurrentThreadAllocatedBytes();
            long t0 = System.nanoTime();
            for (int i = 0; i < n; i++) {
                listener.onMessage(request);
            }
            long t1 = System.nanoTime();
            long bytes1 = mx.getCurrentThreadAllocatedBytes();
            ExecutePlanRequest seen = (ExecutePlanRequest) handler.last;
            String outcome;
            if (seen == request) {
                outcome = "passed unchanged (no rewrite)";
            } else {
                require(seen.getUserContext().getUserId().equals("alice") && seen.getUserContext().getUserName().equals("alice"),
                        name + ": the rewritten message must name the verified user");
                require(seen.getPlan() == request.getPlan(), name + ": the rewrite must share the plan, not copy it");
                require(seen.toByteString().size() - request.toByteString().size() < 64, name + ": only the user context changes");
                outcome = "plan shared";
            }
            System.out.printf(Locale.ROOT, "user-context rewrite, %-28s %-14s (%,10d B serialized): %7.1f ns, %7.1f B allocated per message; %s%n",
                    name, size == 0 ? "small plan" : (size >> 20) + " MB local rel.", request.getSerializedSize(),
                    (t1 - t0) / (double) n, (bytes1 - bytes0) / (double) n, outcome);
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
            long reached = d.handler.reached;
            d.interceptor.interceptCall(d.call, d.headers(), d.handler);
            ns[i] = System.nanoTime() - t0;
            require(d.handler.reached == reached + 1, "denied while timing");
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
