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
import org.sparkproject.connect.grpc.InternalMetadata;
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
 * across, maps a denial to a gRPC status and applies {@code spark.kbase.auth.userContext} to the
 * admitted call's messages ({@link UserContextRewrite}). Any failure denies.
 */
public final class KBaseAuthServerInterceptor implements ServerInterceptor {

    static final String SETTINGS_PREFIX = "spark.kbase.auth.";
    /** Spark's interceptor list: passed on so that the native side can warn about the order. */
    static final String INTERCEPTORS_KEY = "spark.connect.grpc.interceptor.classes";
    /** The same words as the native side's INTERNAL denial. */
    static final String INTERNAL_ERROR_MESSAGE = "internal error in the KBase auth plugin; see the Spark server log";

    private static final Logger LOG = LoggerFactory.getLogger(KBaseAuthServerInterceptor.class);
    private static final Cleaner CLEANER = Cleaner.create();
    /**
     * The token headers' values as the bytes the transport received: gRPC's ASCII marshaller would
     * make a new {@code String} on every read, and the native side wants bytes anyway. (The
     * marshaller hands out gRPC's own array; nothing here writes to it.)
     */
    private static final InternalMetadata.TrustedAsciiMarshaller<byte[]> RAW =
            new InternalMetadata.TrustedAsciiMarshaller<byte[]>() {
                @Override
                public byte[] toAsciiString(byte[] value) {
                    return value;
                }

                @Override
                public byte[] parseAsciiString(byte[] serialized) {
                    return serialized;
                }
            };
    private static final Metadata.Key<byte[]> AUTHORIZATION = InternalMetadata.keyOf("authorization", RAW);
    private static final Metadata.Key<byte[]> KBASE_TOKEN = InternalMetadata.keyOf("x-kbase-token", RAW);
    private static final ServerCall.Listener<Object> NOOP_LISTENER = new ServerCall.Listener<Object>() {
    };

    private final long handle;
    private final boolean wantsPeerAddress;
    private final UserContextRewrite rewrite;
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
            this.rewrite = new UserContextRewrite(NativeAuth.userContextMode(h), this::userName, new Refusals());
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
        UserContextRewrite.Target target;
        try {
            if (closed) {
                throw new IllegalStateException("interceptor used after close()");
            }
            String peer = wantsPeerAddress ? peerAddress(call) : null;
            // gRPC metadata may repeat a key: the first value crosses alone, any others as an
            // array. Shaped for C2's escape analysis (JDK 17), so that the single-valued call
            // allocates nothing here: getAll only for a key that is present (its null path never
            // taken), iterators in block scope, touched only through next/hasNext.
            byte[] firstA = null;
            byte[][] moreA = null;
            if (headers.containsKey(AUTHORIZATION)) {
                Iterator<byte[]> values = headers.getAll(AUTHORIZATION).iterator();
                firstA = values.next();
                if (values.hasNext()) {
                    moreA = moreValues(headers, AUTHORIZATION);
                }
            }
            byte[] firstK = null;
            byte[][] moreK = null;
            if (headers.containsKey(KBASE_TOKEN)) {
                Iterator<byte[]> values = headers.getAll(KBASE_TOKEN).iterator();
                firstK = values.next();
                if (values.hasNext()) {
                    moreK = moreValues(headers, KBASE_TOKEN);
                }
            }
            int status = NativeAuth.authorize(handle, firstA, moreA, firstK, moreK, peer);
            Reference.reachabilityFence(this);
            if (!NativeAuth.allowed(status)) {
                return deny(call, status);
            }
            if (NativeAuth.warns(status)) {
                log(NativeAuth.lastLogLines(), true);
            }
            target = rewrite.target(NativeAuth.verifiedUser(status));
        } catch (Throwable t) {
            LOG.error("KBase auth interceptor failed; denying the call", t);
            return close(call, NativeAuth.INTERNAL, INTERNAL_ERROR_MESSAGE);
        }
        // Outside the guard: a failure in the next handler is that handler's, not an auth failure.
        ServerCall.Listener<ReqT> listener = next.startCall(call, headers);
        return target == null ? listener : rewrite.listener(call, target, listener);
    }

    /**
     * Closes a call the native side denied with {@code status} (a gRPC status code; anything else
     * becomes INTERNAL), with its message, and logs its lines.
     */
    private static <ReqT> ServerCall.Listener<ReqT> deny(ServerCall<ReqT, ?> call, int status) {
        String message = NativeAuth.denialMessage();
        log(NativeAuth.lastLogLines(), status == NativeAuth.UNAVAILABLE || status == NativeAuth.INTERNAL);
        if (status < 1 || status > 16) {
            LOG.error("KBase auth native library returned unknown status code {}; denying with INTERNAL", status);
            return close(call, NativeAuth.INTERNAL, INTERNAL_ERROR_MESSAGE);
        }
        return close(call, status, message);
    }

    /** Closes a denied call, with fresh empty trailers (never the request's headers). */
    private static <ReqT> ServerCall.Listener<ReqT> close(ServerCall<ReqT, ?> call, int status, String message) {
        call.close(Status.fromCodeValue(status).withDescription(message), new Metadata());
        @SuppressWarnings("unchecked")
        ServerCall.Listener<ReqT> noop = (ServerCall.Listener<ReqT>) (ServerCall.Listener<?>) NOOP_LISTENER;
        return noop;
    }

    /** The values of a repeated {@code key} after the first. */
    private static byte[][] moreValues(Metadata headers, Metadata.Key<byte[]> key) {
        List<byte[]> more = new ArrayList<>();
        for (byte[] value : headers.getAll(key)) {
            more.add(value);
        }
        return more.subList(1, more.size()).toArray(new byte[0][]);
    }

    /** The name behind a verified user's number, asked once per number by {@link UserContextRewrite}. */
    private String userName(int user) {
        try {
            return NativeAuth.userName(handle, user);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** Ends calls whose messages must not reach Spark, as denials. */
    private final class Refusals implements UserContextRewrite.Refusals {
        @Override
        public void mismatch(ServerCall<?, ?> call, int user, String claimedUserId) {
            if (closed) {
                failure(call, new IllegalStateException("interceptor used after close()"));
                return;
            }
            int status = NativeAuth.refuseUserContext(handle, user, claimedUserId);
            Reference.reachabilityFence(KBaseAuthServerInterceptor.this);
            deny(call, status);
        }

        @Override
        public void failure(ServerCall<?, ?> call, Throwable cause) {
            LOG.error("KBase auth: cannot apply spark.kbase.auth.userContext to a request message; denying the call",
                    cause);
            close(call, NativeAuth.INTERNAL, INTERNAL_ERROR_MESSAGE);
        }
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
