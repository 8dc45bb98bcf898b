package us.kbase.spark.bench;

import java.util.concurrent.ConcurrentHashMap;

import org.apache.spark.connect.proto.UserContext;
import org.sparkproject.connect.grpc.ForwardingServerCallListener;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;
import org.sparkproject.connect.protobuf.Descriptors.FieldDescriptor;
import org.sparkproject.connect.protobuf.Message;

/**
 * The plain-Java yardstick: the same token rules on the hit path (every value of both headers,
 * Bearer scheme, ambiguity, shape, expiry with one clock read, owner) over a ConcurrentHashMap
 * cache that the benchmark fills in advance, and, if asked, the same user-context rewrite (a
 * listener per call that puts the verified user's prebuilt {@code UserContext} into each
 * message). Misses are not modelled: they deny.
 */
final class JavaReferenceInterceptor implements ServerInterceptor {

    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> KBASE_TOKEN =
            Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final ServerCall.Listener<Object> NOOP = new ServerCall.Listener<Object>() {
    };
    /** A sentinel compared by identity: no header value can be this instance. */
    private static final String AMBIGUOUS = new String("ambiguous");

    private static final class Entry {
        final String user;
        final long expiresAtNanos;
        final UserContext context;

        Entry(String user, long expiresAtNanos) {
            this.user = user;
            this.expiresAtNanos = expiresAtNanos;
            this.context = UserContext.newBuilder().setUserId(user).setUserName(user).build();
        }
    }

    private final ConcurrentHashMap<String, Entry> cache = new ConcurrentHashMap<>();
    private final String owner;
    private final boolean rewrite;

    JavaReferenceInterceptor(String owner, boolean rewrite) {
        this.owner = owner;
        this.rewrite = rewrite;
    }

    void prime(String token, String user, long validForNanos) {
        cache.put(token, new Entry(user, System.nanoTime() + validForNanos));
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        String token = tokenOf(headers.getAll(AUTHORIZATION), true, null);
        token = tokenOf(headers.getAll(KBASE_TOKEN), false, token);
        if (token == null || token == AMBIGUOUS || token.isEmpty() || token.length() > 4096) {
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
        ServerCall.Listener<ReqT> listener = next.startCall(call, headers);
        return rewrite ? new Rewriting<>(listener, e.context) : listener;
    }

    /**
     * The token after reading {@code values} on top of {@code token} (null: none yet): trimmed,
     * without the Bearer scheme for {@code authorization}; {@link #AMBIGUOUS} when two differ or a
     * scheme is wrong.
     */
    private static String tokenOf(Iterable<String> values, boolean bearer, String token) {
        if (values == null || token == AMBIGUOUS) {
            return token;
        }
        for (String v : values) {
            String t = v.trim();
            if (bearer) {
                if (!t.regionMatches(true, 0, "Bearer ", 0, 7)) {
                    return AMBIGUOUS;
                }
                t = t.substring(7).trim();
            }
            if (token != null && !token.equals(t)) {
                return AMBIGUOUS;
            }
            token = t;
        }
        return token;
    }

    @SuppressWarnings("unchecked")
    private static <ReqT> ServerCall.Listener<ReqT> deny(ServerCall<ReqT, ?> call, Status status) {
        call.close(status, new Metadata());
        return (ServerCall.Listener<ReqT>) (ServerCall.Listener<?>) NOOP;
    }

    /** Puts the verified user's context into each message that has one (protobuf reflection). */
    private static final class Rewriting<ReqT> extends ForwardingServerCallListener.SimpleForwardingServerCallListener<ReqT> {
        private final UserContext context;

        Rewriting(ServerCall.Listener<ReqT> next, UserContext context) {
            super(next);
            this.context = context;
        }

        @Override
        @SuppressWarnings("unchecked")
        public void onMessage(ReqT message) {
            if (message instanceof Message) {
                Message m = (Message) message;
                FieldDescriptor f = m.getDescriptorForType().findFieldByName("user_context");
                if (f != null && !context.equals(m.getField(f))) {
                    message = (ReqT) m.toBuilder().setField(f, context).build();
                }
            }
            super.onMessage(message);
        }
    }
}
