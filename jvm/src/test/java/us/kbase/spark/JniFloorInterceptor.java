package us.kbase.spark;

import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;

/**
 * For the benchmark: reads the two headers and makes one JNI call that carries no string
 * ({@code wantsPeerAddress}), then allows. Its cost is the floor any JNI design pays, so the
 * difference to the real interceptor is what happens inside {@code authorize}.
 */
public final class JniFloorInterceptor implements ServerInterceptor, AutoCloseable {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);

    private final long handle;

    public JniFloorInterceptor(String authUrl) {
        NativeAuth.load();
        handle = NativeAuth.create(new String[] {"spark.kbase.auth.url", authUrl, "spark.kbase.auth.owner", "alice"});
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        String a = headers.get(AUTHORIZATION);
        String k = headers.get(KBASE_TOKEN);
        if (NativeAuth.wantsPeerAddress(handle) || (a == null && k == null)) {
            throw new AssertionError("unexpected");
        }
        return next.startCall(call, headers);
    }

    /** The native counters of a real interceptor, for the benchmark's report. */
    public static String metricsOf(KBaseAuthServerInterceptor interceptor) {
        return interceptor.metrics().toString();
    }

    @Override
    public void close() {
        NativeAuth.destroy(handle);
    }
}
