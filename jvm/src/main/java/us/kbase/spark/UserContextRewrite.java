package us.kbase.spark;

import java.lang.reflect.Method;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.function.BiFunction;
import java.util.function.Function;
import java.util.function.IntFunction;

import org.apache.spark.connect.proto.AddArtifactsRequest;
import org.apache.spark.connect.proto.AnalyzePlanRequest;
import org.apache.spark.connect.proto.ArtifactStatusesRequest;
import org.apache.spark.connect.proto.ConfigRequest;
import org.apache.spark.connect.proto.ExecutePlanRequest;
import org.apache.spark.connect.proto.FetchErrorDetailsRequest;
import org.apache.spark.connect.proto.InterruptRequest;
import org.apache.spark.connect.proto.ReattachExecuteRequest;
import org.apache.spark.connect.proto.ReleaseExecuteRequest;
import org.apache.spark.connect.proto.ReleaseSessionRequest;
import org.apache.spark.connect.proto.UserContext;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.protobuf.Descriptors.Descriptor;
import org.sparkproject.connect.protobuf.Descriptors.FieldDescriptor;
import org.sparkproject.connect.protobuf.Message;

/**
 * Spark sees the verified user ({@code spark.kbase.auth.userContext}): every Spark Connect request
 * message carries a {@code user_context} whose {@code user_id} the client wrote, and Spark keys
 * sessions by it. Under {@link #REWRITE} each message of an admitted call reaches Spark with
 * {@code user_id} and {@code user_name} set to the KBase user its token proved; under
 * {@link #REQUIRE} a message whose {@code user_id} is not exactly that user ends the call. A
 * message that has a {@code user_context} and cannot be handled ends the call too: it never
 * reaches Spark unchanged.
 *
 * <p>The rewrite shares everything but the user context with the original ({@code toBuilder()}
 * copies references, not sub-messages or bytes), so a plan's data is never copied. Request types
 * this class was compiled against are handled by their generated methods; others (those of later
 * Spark versions) through protobuf reflection on their {@code user_context} field, found once per
 * class.
 */
final class UserContextRewrite {

    /** The modes, numbered as {@link NativeAuth#userContextMode} returns them. */
    static final int OFF = 0;
    static final int REWRITE = 1;
    static final int REQUIRE = 2;

    /** What ends a call whose message must not reach Spark; each closes the call. */
    interface Refusals {
        /** {@link #REQUIRE}: the message names {@code claimedUserId}, not verified user {@code user}. */
        void mismatch(ServerCall<?, ?> call, int user, String claimedUserId);

        /** The message's user context could not be rewritten or read. */
        void failure(ServerCall<?, ?> call, Throwable cause);
    }

    /** What one verified user's messages need: the name, and the user context to put in them. */
    static final class Target {
        final int user;
        final String name;
        final UserContext context;

        Target(int user, String name) {
            this.user = user;
            this.name = name;
            this.context = UserContext.newBuilder().setUserId(name).setUserName(name).build();
        }
    }

    private final int mode;
    private final IntFunction<String> names;
    private final Refusals refusals;
    /** By user number; filled once per number, then read without a lock. */
    private volatile Target[] targets = new Target[0];

    /**
     * @param names    the name behind a verified user's number (asked once per number)
     * @param refusals how a call is ended when one of its messages must not reach Spark
     */
    UserContextRewrite(int mode, IntFunction<String> names, Refusals refusals) {
        if (mode != OFF && mode != REWRITE && mode != REQUIRE) {
            throw new IllegalStateException("unknown user context mode " + mode);
        }
        this.mode = mode;
        this.names = names;
        this.refusals = refusals;
    }

    /**
     * What the messages of a call admitted for verified user number {@code user} need, or null
     * when they pass as they are: the mode is {@link #OFF}, or there is no verified user
     * ({@code user < 0}: a token-less call from a trusted address).
     */
    Target target(int user) {
        if (mode == OFF || user < 0) {
            return null;
        }
        Target[] known = targets;
        Target t = user < known.length ? known[user] : null;
        return t != null ? t : learn(user);
    }

    private synchronized Target learn(int user) {
        Target[] known = targets;
        if (user < known.length && known[user] != null) {
            return known[user];
        }
        String name = names.apply(user);
        if (name == null || name.isEmpty()) {
            throw new IllegalStateException("no name for verified user number " + user);
        }
        Target t = new Target(user, name);
        Target[] grown = user < known.length ? known.clone() : Arrays.copyOf(known, Math.max(user + 1, 2 * known.length));
        grown[user] = t;
        targets = grown;
        return t;
    }

    /** The listener Spark's handler gets instead of {@code next}: applies the mode to every message. */
    <ReqT> ServerCall.Listener<ReqT> listener(ServerCall<ReqT, ?> call, Target target, ServerCall.Listener<ReqT> next) {
        return new Listener<>(this, call, target, next);
    }

    /**
     * The message Spark should see, or a {@link Mismatch} ({@link #REQUIRE} and another user).
     *
     * @throws RuntimeException when the message has a user context that cannot be rewritten
     */
    private Object apply(Target target, Object message) {
        Access access = ACCESS.get(message.getClass());
        UserContext current = access.get(message);
        if (current == null) {
            return message; // a type without a user context
        }
        if (mode == REQUIRE) {
            String claimed = current.getUserId();
            return claimed.equals(target.name) ? message : new Mismatch(claimed);
        }
        if (current.getUserId().equals(target.name) && current.getUserName().equals(target.name)) {
            return message;
        }
        // Extensions are the client's; they stay. Without any, the prebuilt context does.
        UserContext replacement = current.getExtensionsCount() == 0 ? target.context
                : current.toBuilder().setUserId(target.name).setUserName(target.name).build();
        return access.with(message, replacement);
    }

    /** What {@link #apply} says about a message that names another user. */
    private static final class Mismatch {
        final String claimed;

        Mismatch(String claimed) {
            this.claimed = claimed;
        }
    }

    /**
     * Hands Spark's listener each message as {@link #apply} makes it. After a refusal it tells
     * Spark's listener the call was cancelled (so a streaming handler lets go of what it holds)
     * and passes nothing more on.
     */
    private static final class Listener<ReqT> extends ServerCall.Listener<ReqT> {
        private final UserContextRewrite rewrite;
        private final ServerCall<ReqT, ?> call;
        private final Target target;
        private final ServerCall.Listener<ReqT> next;
        /** gRPC calls a listener from one thread at a time. */
        private boolean ended;

        Listener(UserContextRewrite rewrite, ServerCall<ReqT, ?> call, Target target, ServerCall.Listener<ReqT> next) {
            this.rewrite = rewrite;
            this.call = call;
            this.target = target;
            this.next = next;
        }

        @Override
        public void onMessage(ReqT message) {
            if (ended) {
                return;
            }
            Object out;
            try {
                out = rewrite.apply(target, message);
            } catch (Throwable t) {
                end(() -> rewrite.refusals.failure(call, t));
                return;
            }
            if (out instanceof Mismatch) {
                String claimed = ((Mismatch) out).claimed;
                end(() -> rewrite.refusals.mismatch(call, target.user, claimed));
                return;
            }
            @SuppressWarnings("unchecked")
            ReqT rewritten = (ReqT) out;
            next.onMessage(rewritten);
        }

        /** Ends the call with {@code refusal}; Spark's listener hears of it as a cancellation, then nothing more. */
        private void end(Runnable refusal) {
            ended = true;
            try {
                refusal.run();
            } finally {
                next.onCancel();
            }
        }

        @Override
        public void onHalfClose() {
            if (!ended) {
                next.onHalfClose();
            }
        }

        @Override
        public void onCancel() {
            if (!ended) {
                next.onCancel();
            }
        }

        @Override
        public void onComplete() {
            if (!ended) {
                next.onComplete();
            }
        }

        @Override
        public void onReady() {
            if (!ended) {
                next.onReady();
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reaching the user context of each request type

    /** How to read and replace the user context of one message class. */
    interface Access {
        /** The message's user context (the default instance when unset), or null for a type without one. */
        UserContext get(Object message);

        Object with(Object message, UserContext context);
    }

    private static final Access NONE = new Access() {
        @Override
        public UserContext get(Object message) {
            return null;
        }

        @Override
        public Object with(Object message, UserContext context) {
            return message;
        }
    };

    private static final String USER_CONTEXT_FIELD = "user_context";

    /** The request types of the Spark Connect version this class is compiled against. */
    private static final Map<Class<?>, Access> KNOWN = new HashMap<>();

    static {
        known(AddArtifactsRequest.class, AddArtifactsRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(AnalyzePlanRequest.class, AnalyzePlanRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ArtifactStatusesRequest.class, ArtifactStatusesRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ConfigRequest.class, ConfigRequest::getUserContext, (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ExecutePlanRequest.class, ExecutePlanRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(FetchErrorDetailsRequest.class, FetchErrorDetailsRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(InterruptRequest.class, InterruptRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ReattachExecuteRequest.class, ReattachExecuteRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ReleaseExecuteRequest.class, ReleaseExecuteRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
        known(ReleaseSessionRequest.class, ReleaseSessionRequest::getUserContext,
                (m, c) -> m.toBuilder().setUserContext(c).build());
    }

    private static <M> void known(Class<M> type, Function<M, UserContext> get, BiFunction<M, UserContext, M> with) {
        KNOWN.put(type, new Access() {
            @Override
            public UserContext get(Object message) {
                return get.apply(type.cast(message));
            }

            @Override
            public Object with(Object message, UserContext context) {
                return with.apply(type.cast(message), context);
            }
        });
    }

    /** Per message class, found once. A class whose access cannot be found is retried, and fails the call each time. */
    private static final ClassValue<Access> ACCESS = new ClassValue<Access>() {
        @Override
        protected Access computeValue(Class<?> type) {
            Access known = KNOWN.get(type);
            return known != null ? known : reflective(type);
        }
    };

    /**
     * Access through protobuf reflection, for a request type this class was not compiled against:
     * its {@code user_context} field, found once ({@link #NONE} for a type without one, or not
     * protobuf at all); for a class whose messages differ in type ({@code DynamicMessage}), found
     * on each message.
     */
    static Access reflective(Class<?> type) {
        if (!Message.class.isAssignableFrom(type)) {
            return NONE;
        }
        Method defaultInstance;
        try {
            defaultInstance = type.getMethod("getDefaultInstance");
        } catch (NoSuchMethodException e) {
            return PER_MESSAGE;
        }
        FieldDescriptor field;
        try {
            field = userContextField(((Message) defaultInstance.invoke(null)).getDescriptorForType());
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot inspect request type " + type.getName(), e);
        }
        return field == null ? NONE : new Access() {
            @Override
            public UserContext get(Object message) {
                return (UserContext) ((Message) message).getField(field);
            }

            @Override
            public Object with(Object message, UserContext context) {
                return ((Message) message).toBuilder().setField(field, context).build();
            }
        };
    }

    private static final Access PER_MESSAGE = new Access() {
        @Override
        public UserContext get(Object message) {
            FieldDescriptor field = userContextField(((Message) message).getDescriptorForType());
            return field == null ? null : (UserContext) ((Message) message).getField(field);
        }

        @Override
        public Object with(Object message, UserContext context) {
            FieldDescriptor field = userContextField(((Message) message).getDescriptorForType());
            return ((Message) message).toBuilder().setField(field, context).build();
        }
    };

    /**
     * The {@code user_context} field of a message type, or null when it has none.
     *
     * @throws IllegalStateException when it is not a single {@code spark.connect.UserContext}
     */
    private static FieldDescriptor userContextField(Descriptor type) {
        FieldDescriptor field = type.findFieldByName(USER_CONTEXT_FIELD);
        if (field != null && (field.isRepeated() || field.getJavaType() != FieldDescriptor.JavaType.MESSAGE
                || !field.getMessageType().getFullName().equals(UserContext.getDescriptor().getFullName()))) {
            throw new IllegalStateException(type.getFullName() + "." + USER_CONTEXT_FIELD + " is not a single "
                    + UserContext.getDescriptor().getFullName());
        }
        return field;
    }
}
