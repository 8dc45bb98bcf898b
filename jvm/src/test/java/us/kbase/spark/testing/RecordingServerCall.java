package us.kbase.spark.testing;

import java.net.InetSocketAddress;
import java.net.SocketAddress;

import org.sparkproject.connect.grpc.Attributes;
import org.sparkproject.connect.grpc.Grpc;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.MethodDescriptor;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.Status;

/** A server call that records how it was closed; one instance per call and thread. */
public final class RecordingServerCall extends ServerCall<Object, Object> {

    private final Attributes attributes;
    private int closeCount;
    private Status status;
    private Metadata trailers;

    public RecordingServerCall() {
        this(new InetSocketAddress("127.0.0.1", 40000));
    }

    public RecordingServerCall(SocketAddress remote) {
        this.attributes = Attributes.newBuilder().set(Grpc.TRANSPORT_ATTR_REMOTE_ADDR, remote).build();
    }

    @Override
    public void close(Status status, Metadata trailers) {
        closeCount++;
        this.status = status;
        this.trailers = trailers;
    }

    public int closeCount() {
        return closeCount;
    }

    /** The status the call was closed with, or null. */
    public Status status() {
        return status;
    }

    public Metadata trailers() {
        return trailers;
    }

    @Override
    public Attributes getAttributes() {
        return attributes;
    }

    @Override
    public void request(int numMessages) {
    }

    @Override
    public void sendHeaders(Metadata headers) {
    }

    @Override
    public void sendMessage(Object message) {
    }

    @Override
    public boolean isCancelled() {
        return false;
    }

    @Override
    public MethodDescriptor<Object, Object> getMethodDescriptor() {
        return null;
    }
}
