package us.kbase.e2e;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;

/**
 * Test-only Spark Connect interceptor (tests/e2e/test_deployment.py): logs one INFO line for every
 * call it sees, when it sees it (in interceptCall, before passing the call on), with the call's
 * {@code x-e2e-call} id, so that a test can tell whether a call reached it before or after the
 * KBase interceptor decided. It logs no credential and changes nothing.
 */
public final class OrderProbeInterceptor implements ServerInterceptor {

    private static final Logger LOG = LoggerFactory.getLogger(OrderProbeInterceptor.class);
    private static final Metadata.Key<String> CALL_ID = Metadata.Key.of("x-e2e-call", Metadata.ASCII_STRING_MARSHALLER);

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        LOG.info("order-probe saw {} call={}", call.getMethodDescriptor().getFullMethodName(), headers.get(CALL_ID));
        return next.startCall(call, headers);
    }
}
