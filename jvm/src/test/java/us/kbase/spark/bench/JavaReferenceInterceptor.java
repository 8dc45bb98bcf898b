package us.kbase.spark.bench;

import java.util.concurrent.ConcurrentHashMap;

import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;

/**
 * The plain-Java yardstick: the same token rules on the hit path (headers, Bearer scheme,
 * ambiguity, shape, expiry with one clock read, owner) over a ConcurrentHashMap cache that the
 * benchmark fills in advance. Misses are not modelled: they deny.
 */
final class JavaReferenceInterceptor implements ServerInterceptor {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final ServerCall.Listener<Object> NOOP = new ServerCall.Listener<Object>() {
    };

    private static final class Entry {
        final String user;
        final long expiresAtNanos;

        Entry(String user, long expiresAtNanos) {
            this.user = user;
            this.expiresAtNanos = expiresAtNanos;
        }
    }

    private final ConcurrentHashMap<String, Entry> cache = new ConcurrentHashMap<>();
    private final String owner;

    JavaReferenceInterceptor(String owner) {
        this.owner = owner;
    }

    void prime(String token, String user, long validForNanos) {
        cache.put(token, new Entry(user, System.nanoTime() + validForNanos));
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        String token = null;
        String authorization = headers.get(AUTHORIZATION);
        if (authorization != null) {
            authorization = authorization.trim();
            if (!authorization.regionMatches(true, 0, "Bearer ", 0, 7)) {
                return deny(call, Status.UNAUTHENTICATED);
            }
            token = authorization.substring(7).trim();
        }
        String kbase = headers.get(KBASE_TOKEN);
        if (kbase != null) {
            kbase = kbase.trim();
            if (token != null && !token.equals(kbase)) {
                return deny(call, Status.UNAUTHENTICATED);
            }
            token = kbase;
        }
        if (token == null || token.isEmpty() || token.length() > 4096) {
            return deny(call, Status.UNAUTHENTICATED);
        }
        for (int i = 0; i < token.length(); i++) {
            char c = token.charAt(i);
            if (c <= ' ' || c == 0x7f) {
                return deny(call, Status.UNAUTHENTICATED);
            }
        }
        Entry e = cache.get(token);
        if (e == null) {
            return deny(call, Status.UNAVAILABLE);
        }
        if (System.nanoTime() - e.expiresAtNanos >= 0) {
            return deny(call, Status.UNAUTHENTICATED);
        }
        if (!owner.equals(e.user)) {
            return deny(call, Status.PERMISSION_DENIED);
        }
        return next.startCall(call, headers);
    }

    @SuppressWarnings("unchecked")
    private static <ReqT> ServerCall.Listener<ReqT> deny(ServerCall<ReqT, ?> call, Status status) {
        call.close(status, new Metadata());
        return (ServerCall.Listener<ReqT>) (ServerCall.Listener<?>) NOOP;
    }
}
