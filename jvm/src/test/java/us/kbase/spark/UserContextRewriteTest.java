package us.kbase.spark;

import static org.hamcrest.CoreMatchers.containsString;
import static org.hamcrest.CoreMatchers.not;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.UUID;

import org.apache.spark.connect.proto.AddArtifactsRequest;
import org.apache.spark.connect.proto.AnalyzePlanRequest;
import org.apache.spark.connect.proto.ArtifactStatusesRequest;
import org.apache.spark.connect.proto.ConfigRequest;
import org.apache.spark.connect.proto.ExecutePlanRequest;
import org.apache.spark.connect.proto.FetchErrorDetailsRequest;
import org.apache.spark.connect.proto.InterruptRequest;
import org.apache.spark.connect.proto.LocalRelation;
import org.apache.spark.connect.proto.Plan;
import org.apache.spark.connect.proto.ReattachExecuteRequest;
import org.apache.spark.connect.proto.Relation;
import org.apache.spark.connect.proto.ReleaseExecuteRequest;
import org.apache.spark.connect.proto.ReleaseSessionRequest;
import org.apache.spark.connect.proto.UserContext;
import org.junit.BeforeClass;
import org.junit.Test;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.Status;
import org.sparkproject.connect.protobuf.Any;
import org.sparkproject.connect.protobuf.ByteString;
import org.sparkproject.connect.protobuf.DescriptorProtos.DescriptorProto;
import org.sparkproject.connect.protobuf.DescriptorProtos.FieldDescriptorProto;
import org.sparkproject.connect.protobuf.DescriptorProtos.FileDescriptorProto;
import org.sparkproject.connect.protobuf.Descriptors.Descriptor;
import org.sparkproject.connect.protobuf.Descriptors.FieldDescriptor;
import org.sparkproject.connect.protobuf.Descriptors.FileDescriptor;
import org.sparkproject.connect.protobuf.DynamicMessage;
import org.sparkproject.connect.protobuf.Message;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.LogCapture;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;
import us.kbase.spark.testing.TransportHeaders;

/**
 * {@code spark.kbase.auth.userContext}: what the request messages of an admitted call look like
 * when they reach Spark's handler, for each mode, each request type and a stream.
 */
public class UserContextRewriteTest {

    private static final String KEY = "spark.kbase.auth.userContext";
    /** Every request type of Spark Connect 4.0 that carries a user context. */
    private static final List<Class<? extends Message>> REQUEST_TYPES = List.of(AddArtifactsRequest.class,
            AnalyzePlanRequest.class, ArtifactStatusesRequest.class, ConfigRequest.class, ExecutePlanRequest.class,
            FetchErrorDetailsRequest.class, InterruptRequest.class, ReattachExecuteRequest.class,
            ReleaseExecuteRequest.class, ReleaseSessionRequest.class);

    private static final FakeAuth2 fake = FakeAuth2.shared();
    private static final String alice = Tokens.newToken();
    private static final String bob = Tokens.newToken();

    @BeforeClass
    public static void registerTokens() throws Exception {
        NativeAuth.load();
        fake.addToken(alice, "alice");
        fake.addToken(bob, "bob");
    }

    /** An interceptor for owner alice (bob allowed too) with {@code userContext=mode} (null: unset). */
    private static KBaseAuthServerInterceptor interceptor(String mode, String... extra) {
        Map<String, String> settings = new LinkedHashMap<>();
        settings.put("spark.kbase.auth.url", fake.url);
        settings.put("spark.kbase.auth.owner", "alice");
        settings.put("spark.kbase.auth.allowedUsers", "bob");
        if (mode != null) {
            settings.put(KEY, mode);
        }
        for (int n = 0; n < extra.length; n += 2) {
            settings.put(extra[n], extra[n + 1]);
        }
        return new KBaseAuthServerInterceptor(settings);
    }

    /** Spark's side of a call: the listener the next handler returns, recording what reaches it. */
    static final class Spark implements ServerCallHandler<Object, Object> {
        final List<Object> messages = new ArrayList<>();
        final List<String> events = new ArrayList<>();
        final ServerCall.Listener<Object> listener = new ServerCall.Listener<Object>() {
            @Override
            public void onMessage(Object message) {
                messages.add(message);
                events.add("message");
            }

            @Override
            public void onHalfClose() {
                events.add("halfClose");
            }

            @Override
            public void onCancel() {
                events.add("cancel");
            }

            @Override
            public void onComplete() {
                events.add("complete");
            }
        };

        @Override
        public ServerCall.Listener<Object> startCall(ServerCall<Object, Object> call, Metadata headers) {
            events.add("start");
            return listener;
        }
    }

    /** One admitted call: what the interceptor returned, and Spark's side. */
    static final class Call {
        final RecordingServerCall call;
        final Spark spark = new Spark();
        final ServerCall.Listener<Object> listener;

        Call(KBaseAuthServerInterceptor i, String token) {
            this(i, token, new RecordingServerCall());
        }

        Call(KBaseAuthServerInterceptor i, String token, RecordingServerCall call) {
            this.call = call;
            Metadata headers = token == null ? TransportHeaders.of("content-type", "application/grpc")
                    : TransportHeaders.pyspark("x-kbase-token", token);
            listener = i.interceptCall(call, headers, spark);
            assertEquals("the call must be admitted", List.of("start"), spark.events);
            assertEquals(0, call.closeCount());
        }

        /** Sends a message as the transport would; returns what Spark got (null: nothing). */
        Object send(Object message) {
            int before = spark.messages.size();
            listener.onMessage(message);
            return spark.messages.size() > before ? spark.messages.get(spark.messages.size() - 1) : null;
        }
    }

    private static UserContext context(String userId, String userName) {
        return UserContext.newBuilder().setUserId(userId).setUserName(userName).build();
    }

    private static FieldDescriptor field(Message m, String name) {
        return m.getDescriptorForType().findFieldByName(name);
    }

    /** A request of {@code type} with a session id and a user context naming {@code userId}. */
    private static Message request(Class<? extends Message> type, String userId) throws Exception {
        Message prototype = (Message) type.getMethod("getDefaultInstance").invoke(null);
        Message.Builder b = prototype.toBuilder();
        b.setField(field(prototype, "session_id"), UUID.randomUUID().toString());
        b.setField(field(prototype, "user_context"), context(userId, "Mallory M."));
        // As the transport would hand it over: parsed from bytes.
        return prototype.getParserForType().parseFrom(b.build().toByteArray());
    }

    private static UserContext contextOf(Object message) {
        Message m = (Message) message;
        return (UserContext) m.getField(field(m, "user_context"));
    }

    /** {@code rewritten} is {@code original} with only the user context replaced by alice's. */
    private static void assertRewrittenFor(String user, Message original, Object rewritten) {
        assertTrue("Spark must get a message", rewritten != null);
        assertEquals(context(user, user), contextOf(rewritten));
        Message expected = original.toBuilder().setField(field(original, "user_context"), context(user, user)).build();
        assertEquals(expected, rewritten);
    }

    // ---- the mode ------------------------------------------------------------------------------

    @Test
    public void theModeComesFromTheNativeSettingsAndAppearsInTheStartUpLine() {
        Map<String, Integer> cases = new LinkedHashMap<>();
        cases.put(null, UserContextRewrite.REWRITE);
        cases.put("rewrite", UserContextRewrite.REWRITE);
        cases.put("require", UserContextRewrite.REQUIRE);
        cases.put("off", UserContextRewrite.OFF);
        cases.put("Off", UserContextRewrite.OFF);
        for (Map.Entry<String, Integer> c : cases.entrySet()) {
            List<String> pairs = new ArrayList<>(List.of("spark.kbase.auth.url", fake.url, "spark.kbase.auth.owner", "alice"));
            if (c.getKey() != null) {
                pairs.addAll(List.of(KEY, c.getKey()));
            }
            long h = NativeAuth.create(pairs.toArray(new String[0]));
            try {
                assertEquals("userContext=" + c.getKey(), (int) c.getValue(), NativeAuth.userContextMode(h));
                String line = NativeAuth.describe(h);
                assertThat(line, containsString("userContext="
                        + (c.getKey() == null ? "rewrite" : c.getKey().toLowerCase(java.util.Locale.ROOT))));
            } finally {
                NativeAuth.destroy(h);
            }
        }
        try {
            interceptor("yes").close();
            fail("userContext=yes accepted");
        } catch (IllegalArgumentException e) {
            assertThat(e.getMessage(), containsString(KEY));
            assertThat(e.getMessage(), containsString("'yes'"));
        }
    }

    // ---- rewrite -------------------------------------------------------------------------------

    @Test
    public void everyKnownRequestTypeReachesSparkWithTheVerifiedUser() throws Exception {
        KBaseAuthServerInterceptor i = interceptor(null);
        try {
            for (Class<? extends Message> type : REQUEST_TYPES) {
                Call c = new Call(i, alice);
                Message original = request(type, "mallory");
                assertRewrittenFor("alice", original, c.send(original));
                assertEquals(type.getSimpleName(), 0, c.call.closeCount());
            }
        } finally {
            i.close();
        }
    }

    @Test
    public void theRewriteSharesThePlanAndItsDataInsteadOfCopyingThem() throws Exception {
        byte[] data = new byte[1 << 20];
        new Random(7).nextBytes(data);
        ExecutePlanRequest original = ExecutePlanRequest.parseFrom(ExecutePlanRequest.newBuilder()
                .setSessionId(UUID.randomUUID().toString())
                .setUserContext(context("mallory", ""))
                .setPlan(Plan.newBuilder().setRoot(Relation.newBuilder()
                        .setLocalRelation(LocalRelation.newBuilder().setData(ByteString.copyFrom(data)))))
                .build().toByteArray());
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            ExecutePlanRequest seen = (ExecutePlanRequest) new Call(i, alice).send(original);
            assertRewrittenFor("alice", original, seen);
            assertSame(original.getPlan(), seen.getPlan());
            assertSame(original.getPlan().getRoot().getLocalRelation().getData(),
                    seen.getPlan().getRoot().getLocalRelation().getData());
        } finally {
            i.close();
        }
    }

    @Test
    public void everyMessageOfAStreamIsRewritten() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            Call c = new Call(i, alice);
            String session = UUID.randomUUID().toString();
            List<AddArtifactsRequest> stream = new ArrayList<>();
            stream.add(AddArtifactsRequest.newBuilder().setSessionId(session).setUserContext(context("mallory", ""))
                    .setBeginChunk(AddArtifactsRequest.BeginChunkedArtifact.newBuilder().setName("jars/x.jar")
                            .setNumChunks(2).setTotalBytes(6)
                            .setInitialChunk(AddArtifactsRequest.ArtifactChunk.newBuilder()
                                    .setData(ByteString.copyFromUtf8("abc")))).build());
            stream.add(AddArtifactsRequest.newBuilder().setSessionId(session).setUserContext(context("alice", ""))
                    .setChunk(AddArtifactsRequest.ArtifactChunk.newBuilder().setData(ByteString.copyFromUtf8("def")))
                    .build());
            stream.add(AddArtifactsRequest.newBuilder().setSessionId(session)
                    .setBatch(AddArtifactsRequest.Batch.newBuilder()).build());
            for (AddArtifactsRequest m : stream) {
                assertRewrittenFor("alice", m, c.send(m));
            }
            c.listener.onHalfClose();
            c.listener.onComplete();
            assertEquals(List.of("start", "message", "message", "message", "halfClose", "complete"), c.spark.events);
        } finally {
            i.close();
        }
    }

    @Test
    public void eachVerifiedUserGetsTheirOwnName() throws Exception {
        KBaseAuthServerInterceptor i = interceptor(null);
        try {
            for (String[] who : new String[][] {{alice, "alice"}, {bob, "bob"}, {alice, "alice"}, {bob, "bob"}}) {
                Message m = request(ConfigRequest.class, "alice");
                assertRewrittenFor(who[1], m, new Call(i, who[0]).send(m));
            }
        } finally {
            i.close();
        }
    }

    @Test
    public void aMessageAlreadyNamingTheUserPassesAsItIs() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            ConfigRequest m = ConfigRequest.newBuilder().setSessionId("s").setUserContext(context("alice", "alice")).build();
            assertSame(m, new Call(i, alice).send(m));
            // Only the id right is not enough: Spark shows user_name too.
            ConfigRequest half = ConfigRequest.newBuilder().setUserContext(context("alice", "")).build();
            assertRewrittenFor("alice", half, new Call(i, alice).send(half));
        } finally {
            i.close();
        }
    }

    @Test
    public void theClientsExtensionsStay() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            Any extension = Any.newBuilder().setTypeUrl("type.example/x").setValue(ByteString.copyFromUtf8("v")).build();
            ConfigRequest m = ConfigRequest.newBuilder()
                    .setUserContext(context("mallory", "m").toBuilder().addExtensions(extension)).build();
            ConfigRequest seen = (ConfigRequest) new Call(i, alice).send(m);
            assertEquals(context("alice", "alice").toBuilder().addExtensions(extension).build(), seen.getUserContext());
        } finally {
            i.close();
        }
    }

    /**
     * A request without a user context is read by Spark as user "" (pyspark leaves it out when it
     * finds no SPARK_USER or USER): it gets the verified user too, so that two such callers do not
     * share sessions.
     */
    @Test
    public void aRequestWithoutAUserContextGetsOne() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            ConfigRequest m = ConfigRequest.newBuilder().setSessionId(UUID.randomUUID().toString()).build();
            assertFalse(m.hasUserContext());
            ConfigRequest seen = (ConfigRequest) new Call(i, alice).send(m);
            assertRewrittenFor("alice", m, seen);
            assertTrue(seen.hasUserContext());
        } finally {
            i.close();
        }
    }

    @Test
    public void messagesOfTypesWithoutAUserContextPassAsTheyAre() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            Call c = new Call(i, alice);
            Plan plan = Plan.newBuilder().setRoot(Relation.newBuilder()).build();
            assertSame(plan, c.send(plan));
            Object notProtobuf = new java.io.ByteArrayInputStream(new byte[] {1, 2});
            assertSame(notProtobuf, c.send(notProtobuf));
            DynamicMessage other = DynamicMessage.newBuilder(futureType(false)).build();
            assertSame(other, c.send(other));
        } finally {
            i.close();
        }
    }

    /**
     * A request type this build does not know (e.g. CloneSessionRequest of Spark 4.1,
     * GetStatusRequest of 4.2) is rewritten through protobuf reflection: here a message type made
     * at run time with a {@code user_context} field.
     */
    @Test
    public void anUnknownRequestTypeIsRewrittenThroughReflection() throws Exception {
        Descriptor type = futureType(true);
        DynamicMessage m = DynamicMessage.newBuilder(type)
                .setField(type.findFieldByName("session_id"), "s1")
                .setField(type.findFieldByName("user_context"), context("mallory", "")).build();
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try {
            assertRewrittenFor("alice", m, new Call(i, alice).send(m));
        } finally {
            i.close();
        }
    }

    @Test
    public void reflectionAgreesWithTheSpecialisedRewriteForEveryKnownType() throws Exception {
        UserContext target = context("alice", "alice");
        for (Class<? extends Message> type : REQUEST_TYPES) {
            Message m = request(type, "mallory");
            UserContextRewrite.Access access = UserContextRewrite.reflective(type);
            assertEquals(context("mallory", "Mallory M."), access.get(m));
            assertRewrittenFor("alice", m, access.with(m, target));
        }
        assertNull(UserContextRewrite.reflective(Plan.class).get(Plan.getDefaultInstance()));
        assertNull(UserContextRewrite.reflective(String.class).get("x"));
    }

    /** A user context that cannot be rewritten (here: of the wrong type) ends the call: INTERNAL. */
    @Test
    public void aMessageThatCannotBeRewrittenEndsTheCallWithInternalAndNeverReachesSpark() throws Exception {
        Descriptor type = oddType();
        DynamicMessage odd = DynamicMessage.newBuilder(type).setField(type.findFieldByName("user_context"), "alice").build();
        KBaseAuthServerInterceptor i = interceptor("rewrite");
        try (LogCapture log = new LogCapture()) {
            Call c = new Call(i, alice);
            assertNull(c.send(odd));
            assertEquals(1, c.call.closeCount());
            assertEquals(Status.Code.INTERNAL, c.call.status().getCode());
            assertEquals(KBaseAuthServerInterceptor.INTERNAL_ERROR_MESSAGE, c.call.status().getDescription());
            assertTrue(c.call.trailers().keys().isEmpty());
            assertThat(log.text(), containsString("ERROR us.kbase.spark.KBaseAuthServerInterceptor - KBase auth: cannot "
                    + "apply spark.kbase.auth.userContext"));
            // Spark's side hears of a cancelled call and gets nothing more, good messages included.
            assertNull(c.send(request(ConfigRequest.class, "mallory")));
            c.listener.onHalfClose();
            c.listener.onComplete();
            assertEquals(List.of("start", "cancel"), c.spark.events);
            assertEquals(1, c.call.closeCount());
        } finally {
            i.close();
        }
    }

    // ---- require -------------------------------------------------------------------------------

    @Test
    public void requireRefusesAnotherUserAnEmptyUserIdAndNoUserContext() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("require");
        try (LogCapture log = new LogCapture()) {
            Object[][] cases = {
                {ExecutePlanRequest.newBuilder().setUserContext(context("bob", "bob")).build(), "user_id 'bob'"},
                {ExecutePlanRequest.newBuilder().setUserContext(context("", "alice")).build(), "an empty user_id"},
                {ExecutePlanRequest.newBuilder().build(), "an empty user_id"},
                {ExecutePlanRequest.newBuilder().setUserContext(context("Alice", "")).build(), "a user_id of 5 characters"},
                {ExecutePlanRequest.newBuilder().setUserContext(context(bob, "")).build(), "a user_id of 32 characters"},
            };
            for (Object[] c : cases) {
                Call call = new Call(i, alice);
                assertNull("must not reach Spark: " + c[1], call.send(c[0]));
                assertEquals(1, call.call.closeCount());
                Status s = call.call.status();
                assertEquals(Status.Code.PERMISSION_DENIED, s.getCode());
                assertThat(s.getDescription(), containsString((String) c[1]));
                assertThat(s.getDescription(), containsString("'alice'"));
                assertThat(s.getDescription(), containsString("user_id=alice"));
                assertThat(s.getDescription(), containsString("SPARK_USER=alice"));
                assertThat(s.getDescription(), not(containsString(bob)));
                assertTrue(call.call.trailers().keys().isEmpty());
                assertEquals(List.of("start", "cancel"), call.spark.events);
            }
            assertEquals((long) cases.length, (long) i.metrics().get("denied.user_context_mismatch"));
            String text = log.text();
            assertThat(text, containsString("INFO us.kbase.spark.KBaseAuthServerInterceptor - KBase auth denied call: "
                    + "status=PERMISSION_DENIED reason=user_context_mismatch"));
            assertThat(text, not(containsString(bob)));
            assertThat(text, not(containsString(alice)));
        } finally {
            i.close();
        }
    }

    @Test
    public void requireLetsTheVerifiedUserThroughUnchanged() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("require");
        try {
            Call c = new Call(i, alice);
            ExecutePlanRequest m = ExecutePlanRequest.newBuilder().setUserContext(context("alice", "whatever")).build();
            assertSame(m, c.send(m));
            // A later message of the same stream naming someone else still ends the call.
            assertNull(c.send(ExecutePlanRequest.newBuilder().setUserContext(context("bob", "")).build()));
            assertEquals(Status.Code.PERMISSION_DENIED, c.call.status().getCode());
            assertEquals(List.of("start", "message", "cancel"), c.spark.events);
            // bob, an allowed user, must name himself.
            ConfigRequest own = ConfigRequest.newBuilder().setUserContext(context("bob", "")).build();
            assertSame(own, new Call(i, bob).send(own));
        } finally {
            i.close();
        }
    }

    // ---- off, and calls without a verified user ------------------------------------------------

    @Test
    public void offPassesEverythingAsItIs() throws Exception {
        KBaseAuthServerInterceptor i = interceptor("off");
        try {
            Call c = new Call(i, alice);
            assertSame(c.spark.listener, c.listener);
            Message m = request(ExecutePlanRequest.class, "mallory");
            assertSame(m, c.send(m));
        } finally {
            i.close();
        }
    }

    /** README: a token-less call from a trusted address has no verified user; its messages pass as they are. */
    @Test
    public void aTokenlessCallFromATrustedAddressPassesAsItIs() throws Exception {
        for (String mode : new String[] {"rewrite", "require"}) {
            KBaseAuthServerInterceptor i = interceptor(mode, "spark.kbase.auth.trustedAddresses", "127.0.0.1");
            try {
                Call c = new Call(i, null, new RecordingServerCall(new InetSocketAddress("127.0.0.1", 4000)));
                assertSame(c.spark.listener, c.listener);
                Message m = request(ExecutePlanRequest.class, "mallory");
                assertSame(m, c.send(m));
                // With a token, the same caller is rewritten (or checked).
                Call withToken = new Call(i, alice, new RecordingServerCall(new InetSocketAddress("127.0.0.1", 4000)));
                assertNotSame(withToken.spark.listener, withToken.listener);
            } finally {
                i.close();
            }
        }
    }

    // ---- the boundary --------------------------------------------------------------------------

    @Test
    public void allowingStatusesCarryTheUserAndTheWarningAndNeverLookLikeDenials() {
        assertTrue(NativeAuth.allowed(0));
        assertEquals(-1, NativeAuth.verifiedUser(0));
        assertFalse(NativeAuth.warns(0));
        assertEquals(-1, NativeAuth.verifiedUser(-1));
        assertTrue(NativeAuth.warns(-1));
        assertEquals(0, NativeAuth.verifiedUser(-2));
        assertFalse(NativeAuth.warns(-2));
        assertEquals(0, NativeAuth.verifiedUser(-3));
        assertTrue(NativeAuth.warns(-3));
        assertEquals(7, NativeAuth.verifiedUser(-16));
        assertEquals(Integer.MAX_VALUE / 2 - 1, NativeAuth.verifiedUser(-Integer.MAX_VALUE));
        for (int denial = 1; denial <= 16; denial++) {
            assertFalse(NativeAuth.allowed(denial));
        }
    }

    @Test
    public void userNamesComeFromTheNumbersAuthorizeHandsOut() {
        long h = NativeAuth.create(new String[] {"spark.kbase.auth.url", fake.url, "spark.kbase.auth.owner", "alice",
            "spark.kbase.auth.allowedUsers", "bob"});
        try {
            int a = NativeAuth.authorize(h, null, null, alice.getBytes(java.nio.charset.StandardCharsets.US_ASCII), null, null);
            int b = NativeAuth.authorize(h, null, null, bob.getBytes(java.nio.charset.StandardCharsets.US_ASCII), null, null);
            assertTrue(NativeAuth.allowed(a) && NativeAuth.allowed(b));
            assertEquals("alice", NativeAuth.userName(h, NativeAuth.verifiedUser(a)));
            assertEquals("bob", NativeAuth.userName(h, NativeAuth.verifiedUser(b)));
            for (int never : new int[] {-1, 2, 1000}) {
                try {
                    NativeAuth.userName(h, never);
                    fail("a name for user number " + never);
                } catch (IllegalStateException e) {
                    assertThat(e.getMessage(), containsString("no such user number"));
                }
            }
        } finally {
            NativeAuth.destroy(h);
        }
    }

    // ---- message types made at run time -------------------------------------------------------

    /** A request type "from a later Spark": session_id, and a user_context if {@code withUserContext}. */
    private static Descriptor futureType(boolean withUserContext) throws Exception {
        DescriptorProto.Builder message = DescriptorProto.newBuilder().setName("FutureRequest")
                .addField(FieldDescriptorProto.newBuilder().setName("session_id").setNumber(1)
                        .setType(FieldDescriptorProto.Type.TYPE_STRING));
        if (withUserContext) {
            message.addField(FieldDescriptorProto.newBuilder().setName("user_context").setNumber(2)
                    .setType(FieldDescriptorProto.Type.TYPE_MESSAGE).setTypeName(".spark.connect.UserContext"));
        }
        return build("future_" + withUserContext + ".proto", message);
    }

    /** A type whose user_context is a string: it cannot take a UserContext. */
    private static Descriptor oddType() throws Exception {
        return build("odd.proto", DescriptorProto.newBuilder().setName("OddRequest")
                .addField(FieldDescriptorProto.newBuilder().setName("user_context").setNumber(2)
                        .setType(FieldDescriptorProto.Type.TYPE_STRING)));
    }

    private static Descriptor build(String file, DescriptorProto.Builder message) throws Exception {
        FileDescriptor base = UserContext.getDescriptor().getFile();
        FileDescriptorProto proto = FileDescriptorProto.newBuilder().setName("kbase_test/" + file)
                .setPackage("kbase.test").setSyntax("proto3").addDependency(base.getName())
                .addMessageType(message).build();
        return FileDescriptor.buildFrom(proto, new FileDescriptor[] {base}).getMessageTypes().get(0);
    }
}
