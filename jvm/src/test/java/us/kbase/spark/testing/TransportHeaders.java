package us.kbase.spark.testing;

import java.nio.charset.StandardCharsets;

import org.sparkproject.connect.grpc.InternalMetadata;
import org.sparkproject.connect.grpc.Metadata;

/**
 * Request headers as gRPC's transport hands them to interceptors: a {@code Metadata} made from the
 * name/value byte arrays it received ({@code InternalMetadata.newMetadata}, as grpc-netty does),
 * whose values are parsed on each read, rather than one filled by {@code put}.
 */
public final class TransportHeaders {

    private TransportHeaders() {
    }

    /** Headers from alternating names and values, in wire order (a name may repeat). */
    public static Metadata of(String... namesAndValues) {
        byte[][] wire = new byte[namesAndValues.length][];
        for (int i = 0; i < wire.length; i++) {
            wire[i] = namesAndValues[i].getBytes(StandardCharsets.US_ASCII);
        }
        return InternalMetadata.newMetadata(wire);
    }

    /**
     * What pyspark 4.0's client sends with a token (captured with a grpc-java server):
     * {@code sc://localhost:P/;token=T} puts it in {@code authorization: Bearer T},
     * {@code ;x-kbase-token=T} in {@code x-kbase-token: T}. Pseudo-headers and {@code te} are
     * not part of the metadata.
     */
    public static Metadata pyspark(String header, String token) {
        return of("content-type", "application/grpc", "grpc-accept-encoding", "identity, deflate, gzip",
                "user-agent", "grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)",
                header, header.equals("authorization") ? "Bearer " + token : token);
    }
}
