package us.kbase.spark.testing;

import java.util.concurrent.atomic.LongAdder;

import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;

/** The next handler in the chain: counts the calls that got through. */
public final class RecordingHandler implements ServerCallHandler<Object, Object> {

    /** What a handler reached after an allow returns. */
    public static final ServerCall.Listener<Object> LISTENER = new ServerCall.Listener<Object>() {
    };

    private final LongAdder reached = new LongAdder();

    @Override
    public ServerCall.Listener<Object> startCall(ServerCall<Object, Object> call, Metadata headers) {
        reached.increment();
        return LISTENER;
    }

    public long reached() {
        return reached.sum();
    }
}
