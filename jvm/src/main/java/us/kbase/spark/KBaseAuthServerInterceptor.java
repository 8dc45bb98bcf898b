package us.kbase.spark;

import java.lang.ref.Cleaner;
import java.lang.ref.Reference;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.sparkproject.connect.grpc.Grpc;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;

import scala.Tuple2;

/**
 * Spark Connect server interceptor that admits only calls carrying a valid KBase token of the pod
 * owner (or another allowed user).
 *
 * <p>Enable it with {@code spark.connect.grpc.interceptor.classes=us.kbase.spark.KBaseAuthServerInterceptor}.
 * Settings come from {@code spark.kbase.auth.*} in the Spark configuration (Java system properties
 * outside Spark) and the environment variables {@code KBASE_AUTH_URL} and {@code USER}.
 *
 * <p>Every decision is made by the native library; this class only carries the call's metadata
 * across and maps a denial to a gRPC status. Any failure denies.
 */
public final class KBaseAuthServerInterceptor implements ServerInterceptor {

    static final String SETTINGS_PREFIX = "spark.kbase.auth.";
    /** Spark's interceptor list: passed on so that the native side can warn about the order. */
    static final String INTERCEPTORS_KEY = "spark.connect.grpc.interceptor.classes";
    /** The same words as the native side's INTERNAL denial. */
    static final String INTERNAL_ERROR_MESSAGE = "internal error in the KBase auth plugin; see the Spark server log";

    private static final Logger LOG = LoggerFactory.getLogger(KBaseAuthServerInterceptor.class);
    private static final Cleaner CLEANER = Cleaner.create();
    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final ServerCall.Listener<Object> NOOP_LISTENER = new ServerCall.Listener<Object>() {
    };

    private final long handle;
    private final boolean wantsPeerAddress;
    private final String description;
    private final Cleaner.Cleanable cleanable;
    private volatile boolean closed;

    /**
     * The constructor Spark calls. Reads {@code spark.kbase.auth.*} from the running Spark
     * configuration (or from system properties when there is no SparkEnv) and the environment.
     *
     * @throws IllegalArgumentException naming the setting when the configuration is invalid;
     *                                  Spark then refuses to start the Connect server
     * @throws UnsatisfiedLinkError     when the native library cannot be loaded on this system
     */
    public KBaseAuthServerInterceptor() {
        this(gatherSettings(sparkSettings(), System.getenv()));
        SparkEnv env = SparkEnv.get();
        if (env != null) {
            env.metricsSystem().registerSource(new KBaseAuthMetricsSource(this::metricValues));
        }
    }

    /** Creates an interceptor from exactly these settings (keys as documented for {@link NativeAuth#create}). */
    KBaseAuthServerInterceptor(Map<String, String> settings) {
        NativeAuth.load();
        long h = NativeAuth.create(keysAndValues(settings));
        if (h == 0) {
            throw new IllegalStateException("the KBase auth native library returned no authenticator");
        }
        Release release = new Release(h);
        try {
            this.wantsPeerAddress = NativeAuth.wantsPeerAddress(h);
            this.description = NativeAuth.describe(h);
        } catch (RuntimeException | Error e) {
            release.run();
            throw e;
        }
        this.handle = h;
        this.cleanable = CLEANER.register(this, release);
        LOG.info("{}; native libraries in the jar: {}", description, NativeAuth.jarPlatforms());
        for (String warning : NativeAuth.warnings(h)) {
            LOG.warn("{}", warning);
        }
    }

    /** The settings as the alternating key/value array {@link NativeAuth#create} takes. */
    static String[] keysAndValues(Map<String, String> settings) {
        String[] pairs = new String[settings.size() * 2];
        int i = 0;
        for (Map.Entry<String, String> e : settings.entrySet()) {
            pairs[i++] = e.getKey();
            pairs[i++] = e.getValue();
        }
        return pairs;
    }

    /**
     * The settings the public constructor passes on: the Spark (or system-property) entries under
     * {@value #SETTINGS_PREFIX} and {@value #INTERCEPTORS_KEY}, {@code KBASE_AUTH_URL} and
     * {@code USER} from {@code env}, and the JVM's {@code user.name}.
     */
    static Map<String, String> gatherSettings(Map<String, String> spark, Map<String, String> env) {
        Map<String, String> settings = new LinkedHashMap<>();
        for (Map.Entry<String, String> e : spark.entrySet()) {
            boolean wanted = e.getKey().startsWith(SETTINGS_PREFIX) || e.getKey().equals(INTERCEPTORS_KEY);
            if (wanted && e.getValue() != null) {
                settings.put(e.getKey(), e.getValue());
            }
        }
        for (String name : new String[] {"KBASE_AUTH_URL", "USER"}) {
            String value = env.get(name);
            if (value != null) {
                settings.put(name, value);
            }
        }
        String account = System.getProperty("user.name");
        if (account != null) {
            settings.put("user.name", account);
        }
        return settings;
    }

    /** Entries of the running SparkConf, or of the system properties outside Spark. */
    private static Map<String, String> sparkSettings() {
        Map<String, String> out = new LinkedHashMap<>();
        SparkEnv env = SparkEnv.get();
        if (env != null) {
            SparkConf conf = env.conf();
            for (Tuple2<String, String> kv : conf.getAll()) {
                out.put(kv._1(), kv._2());
            }
            return out;
        }
        Properties props = System.getProperties();
        List<String> names = new ArrayList<>(props.stringPropertyNames());
        Collections.sort(names);
        for (String name : names) {
            out.put(name, props.getProperty(name));
        }
        return out;
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        int code;
        String message;
        try {
            if (closed) {
                throw new IllegalStateException("interceptor used after close()");
            }
            String peer = wantsPeerAddress ? peerAddress(call) : null;
            // gRPC metadata may repeat a key: the first value crosses as a string, any others as an
            // array. Shaped for C2's escape analysis (JDK 17), so that the single-valued call
            // allocates only gRPC's own value String: getAll only for a key that is present (its
            // null path never taken), iterators in block scope, touched only through next/hasNext.
            String firstA = null;
            String[] moreA = null;
            if (headers.containsKey(AUTHORIZATION)) {
                Iterator<String> values = headers.getAll(AUTHORIZATION).iterator();
                firstA = values.next();
                if (values.hasNext()) {
                    moreA = moreValues(headers, AUTHORIZATION);
                }
            }
            String firstK = null;
            String[] moreK = null;
            if (headers.containsKey(KBASE_TOKEN)) {
                Iterator<String> values = headers.getAll(KBASE_TOKEN).iterator();
                firstK = values.next();
                if (values.hasNext()) {
                    moreK = moreValues(headers, KBASE_TOKEN);
                }
            }
            code = NativeAuth.authorize(handle, firstA, moreA, firstK, moreK, peer);
            Reference.reachabilityFence(this);
            if (code == NativeAuth.ALLOW_WITH_WARNING) {
                log(NativeAuth.lastLogLines(), true);
                code = 0;
            }
            if (code == 0) {
                message = null;
            } else {
                message = NativeAuth.denialMessage();
                log(NativeAuth.lastLogLines(), code == NativeAuth.UNAVAILABLE || code == NativeAuth.INTERNAL);
                if (code < 1 || code > 16) {
                    LOG.error("KBase auth native library returned unknown status code {}; denying with INTERNAL", code);
                    code = NativeAuth.INTERNAL;
                    message = INTERNAL_ERROR_MESSAGE;
                }
            }
        } catch (Throwable t) {
            LOG.error("KBase auth interceptor failed; denying the call", t);
            code = NativeAuth.INTERNAL;
            message = INTERNAL_ERROR_MESSAGE;
        }
        if (code == 0) {
            // Outside the guard: a failure in the next handler is that handler's, not an auth failure.
            return next.startCall(call, headers);
        }
        call.close(Status.fromCodeValue(code).withDescription(message), new Metadata());
        @SuppressWarnings("unchecked")
        ServerCall.Listener<ReqT> noop = (ServerCall.Listener<ReqT>) (ServerCall.Listener<?>) NOOP_LISTENER;
        return noop;
    }

    /** The values of a repeated {@code key} after the first. */
    private static String[] moreValues(Metadata headers, Metadata.Key<String> key) {
        List<String> more = new ArrayList<>();
        for (String value : headers.getAll(key)) {
            more.add(value);
        }
        return more.subList(1, more.size()).toArray(new String[0]);
    }

    /** Logs the native side's lines (null: rate-limited away) at WARN or INFO. */
    private static void log(String[] lines, boolean warn) {
        if (lines == null) {
            return;
        }
        for (String line : lines) {
            if (warn) {
                LOG.warn("{}", line);
            } else {
                LOG.info("{}", line);
            }
        }
    }

    private static String peerAddress(ServerCall<?, ?> call) {
        SocketAddress remote = call.getAttributes().get(Grpc.TRANSPORT_ATTR_REMOTE_ADDR);
        if (remote instanceof InetSocketAddress) {
            InetSocketAddress inet = (InetSocketAddress) remote;
            return inet.getAddress() != null ? inet.getAddress().getHostAddress() : inet.getHostString();
        }
        return null;
    }

    /** One snapshot of the native counters, in the order of {@link NativeAuth#metricNames()}. */
    long[] metricValues() {
        if (closed) {
            throw new IllegalStateException("interceptor used after close()");
        }
        try {
            return NativeAuth.metricValues(handle);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** The counters by name, for tests and diagnostics. */
    Map<String, Long> metrics() {
        String[] names = NativeAuth.metricNames();
        long[] values = metricValues();
        Map<String, Long> out = new LinkedHashMap<>();
        for (int i = 0; i < names.length; i++) {
            out.put(names[i], values[i]);
        }
        return out;
    }

    /**
     * Releases the native authenticator now instead of when this object becomes unreachable.
     * For tests: no call may be in flight, and later calls are denied with INTERNAL.
     */
    void close() {
        closed = true;
        cleanable.clean();
    }

    @Override
    public String toString() {
        return "KBaseAuthServerInterceptor[" + description + "]";
    }

    /** Frees the handle; holds no reference to the interceptor, so the Cleaner can run. */
    private static final class Release implements Runnable {
        private final long handle;

        Release(long handle) {
            this.handle = handle;
        }

        @Override
        public void run() {
            NativeAuth.destroy(handle);
        }
    }
}
