package us.kbase.spark;

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

import org.sparkproject.connect.grpc.CallOptions;
import org.sparkproject.connect.grpc.ClientInterceptors;
import org.sparkproject.connect.grpc.Contexts;
import org.sparkproject.connect.grpc.Context;
import org.sparkproject.connect.grpc.ManagedChannel;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.MethodDescriptor;
import org.sparkproject.connect.grpc.Server;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.ServerInterceptors;
import org.sparkproject.connect.grpc.ServerServiceDefinition;
import org.sparkproject.connect.grpc.Status;
import org.sparkproject.connect.grpc.StatusRuntimeException;
import org.sparkproject.connect.grpc.netty.NettyChannelBuilder;
import org.sparkproject.connect.grpc.netty.NettyServerBuilder;
import org.sparkproject.connect.grpc.stub.ClientCalls;
import org.sparkproject.connect.grpc.stub.MetadataUtils;
import org.sparkproject.connect.grpc.stub.ServerCalls;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.Tokens;

/**
 * Run by {@code gradle smokeTest} once per place the gateway binary ships to (see build.gradle's
 * gateway smoke tasks): the built {@code kbase-spark-gateway}, started as a command (directly, or
 * in a Debian 11 root through {@code scripts/cross/run.sh}, under qemu-user for aarch64), answers
 * {@code --help}, starts, and routes gRPC calls: a valid token reaches its user's backend (a
 * trivial gRPC server in this JVM, on loopback), an invalid one is UNAUTHENTICATED and reaches
 * nothing. SIGTERM then stops it with status 0. Exits non-zero on any surprise.
 *
 * <p>Arguments: the command that runs the binary. System properties: {@value #GLIBC_PROPERTY} (the
 * glibc the running gateway must map, e.g. {@code 2.31}; unchecked when unset) and
 * {@code fakeAuth2.bin}.
 */
public final class GatewaySmokeMain {

    static final String GLIBC_PROPERTY = "smoke.glibc";
    /** Generous: under qemu-user the binary starts in seconds, not milliseconds. */
    private static final long START_SECONDS = 120;
    private static final String SERVICE = "kbase.smoke.Echo";
    private static final MethodDescriptor<byte[], byte[]> CALL = MethodDescriptor.<byte[], byte[]>newBuilder()
            .setType(MethodDescriptor.MethodType.UNARY)
            .setFullMethodName(MethodDescriptor.generateFullMethodName(SERVICE, "Call"))
            .setRequestMarshaller(new Bytes())
            .setResponseMarshaller(new Bytes())
            .build();
    private static final Metadata.Key<String> KBASE_TOKEN = Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    private GatewaySmokeMain() {
    }

    public static void main(String[] args) throws Exception {
        try {
            run(args);
        } catch (SmokeFailure e) {
            System.out.println("GATEWAY SMOKE FAILED: " + e.getMessage());
            System.exit(1);
        }
    }

    private static void run(String[] args) throws Exception {
        check(args.length > 0, "usage: GatewaySmokeMain COMMAND... (the command that runs kbase-spark-gateway)");
        List<String> gateway = List.of(args);

        Run help = Run.start(append(gateway, "--help"));
        check(help.waitFor(START_SECONDS) == 0, "--help must exit 0:\n" + help.output());
        check(help.output().startsWith("kbase-spark-gateway ") && help.output().contains("[PROXY_LISTEN_PORT]")
                && help.output().contains("[GATEWAY_ADMIN_PORT]"), "--help must list the settings:\n" + help.output());
        System.out.println("--help: " + help.output().lines().findFirst().orElse(""));

        Backend alice = Backend.start("alice");
        Backend bob = Backend.start("bob");
        try (FakeAuth2 fake = FakeAuth2.startOrAttach()) {
            String aliceToken = Tokens.newToken();
            String bobToken = Tokens.newToken();
            fake.addToken(aliceToken, "alice");
            fake.addToken(bobToken, "bob");
            Run run = Run.start(append(gateway, "--bind", "127.0.0.1", "--listen-port", "0", "--admin-port", "0",
                    "--auth-url", fake.url, "--backend-namespace", "smoke",
                    "--service-template", "pod-{username}.{namespace}.invalid", "--backend-port", "15002",
                    "--resolve", "pod-alice.smoke.invalid:15002=127.0.0.1:" + alice.port(),
                    "--resolve", "pod-bob.smoke.invalid:15002=127.0.0.1:" + bob.port()));
            try {
                Matcher listening = run.awaitLine(Pattern.compile("listening grpc=(\\S+) admin=(\\S+)"), START_SECONDS);
                System.out.println("gateway (pid " + run.pid() + "): " + listening.group());
                checkGlibc(run.pid());
                check(get("http://" + listening.group(2) + "/readyz") == 200, "/readyz must answer 200 once listening");
                ManagedChannel channel = NettyChannelBuilder.forTarget(listening.group(1)).usePlaintext().build();
                try {
                    expectAnswer(channel, header(KBASE_TOKEN, aliceToken), alice, "alice");
                    expectAnswer(channel, header(AUTHORIZATION, "Bearer " + bobToken), bob, "bob");
                    StatusRuntimeException denied = callFails(channel, header(KBASE_TOKEN, Tokens.newToken()));
                    check(denied.getStatus().getCode() == Status.Code.UNAUTHENTICATED,
                            "an unknown token must be UNAUTHENTICATED, got " + denied.getStatus());
                    check(alice.calls.size() == 1 && bob.calls.size() == 1, "a refused call must reach no backend");
                    System.out.println("unknown token: " + denied.getStatus().getCode() + " ("
                            + denied.getStatus().getDescription() + ")");
                } finally {
                    channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
                }
                // SIGTERM through the handle: Process.destroy() would also close our end of the
                // output pipe, and the draining gateway's log lines would meet a closed pipe.
                run.process.toHandle().destroy();
                int status = run.waitFor(60);
                check(status == 0, "after SIGTERM the gateway must exit 0, not " + status + ":\n" + run.output());
                run.awaitLine(Pattern.compile("\\bstopped$"), 10);
                System.out.println("SIGTERM: drained and exited 0");
            } catch (RuntimeException | Error e) {
                System.out.println("gateway output:\n" + run.output());
                throw e;
            } finally {
                run.process.destroyForcibly();
            }
        } finally {
            alice.server.shutdownNow();
            bob.server.shutdownNow();
        }
        System.out.println("GATEWAY SMOKE OK");
    }

    /** The call with {@code headers} answers OK from {@code backend}, which saw {@code user}'s token. */
    private static void expectAnswer(ManagedChannel channel, Metadata headers, Backend backend, String user) {
        byte[] answer = call(channel, headers, "ping from " + user);
        String text = new String(answer, StandardCharsets.UTF_8);
        check(text.equals(backend.name + " answers: ping from " + user), "unexpected answer for " + user + ": " + text);
        check(backend.calls.size() == 1, user + "'s call must reach " + backend.name + " once: " + backend.calls);
        Metadata seen = backend.calls.get(0);
        check(headers.keys().stream().allMatch(k -> {
            Metadata.Key<String> key = Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER);
            return String.valueOf(headers.get(key)).equals(seen.get(key));
        }), "the token header must reach the pod as sent");
        System.out.println(user + "'s token (" + headers.keys() + "): OK from " + backend.name);
    }

    private static byte[] call(ManagedChannel channel, Metadata headers, String request) {
        return ClientCalls.blockingUnaryCall(
                ClientInterceptors.intercept(channel, MetadataUtils.newAttachHeadersInterceptor(headers)), CALL,
                CallOptions.DEFAULT.withDeadlineAfter(60, TimeUnit.SECONDS), request.getBytes(StandardCharsets.UTF_8));
    }

    private static StatusRuntimeException callFails(ManagedChannel channel, Metadata headers) {
        try {
            byte[] answer = call(channel, headers, "ping");
            check(false, "the call must fail, but answered " + new String(answer, StandardCharsets.UTF_8));
            throw new AssertionError();
        } catch (StatusRuntimeException expected) {
            return expected;
        }
    }

    private static Metadata header(Metadata.Key<String> key, String value) {
        Metadata m = new Metadata();
        m.put(key, value);
        return m;
    }

    /** The gateway process must map the C library of version {@value #GLIBC_PROPERTY}, when given. */
    private static void checkGlibc(long pid) throws IOException {
        List<String> libc = Files.readAllLines(Paths.get("/proc/" + pid + "/maps")).stream()
                .filter(line -> line.matches(".*/libc(-[\\d.]+)?\\.so.*"))
                .map(line -> line.substring(line.indexOf('/')))
                .distinct()
                .collect(Collectors.toList());
        System.out.println("gateway maps " + libc);
        String glibc = System.getProperty(GLIBC_PROPERTY);
        check(glibc == null || libc.stream().anyMatch(l -> l.endsWith("/libc-" + glibc + ".so")),
                "the gateway must run on glibc " + glibc + ", but maps " + libc);
    }

    private static int get(String url) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(url).openConnection();
        c.setConnectTimeout(10_000);
        c.setReadTimeout(10_000);
        try {
            return c.getResponseCode();
        } finally {
            c.disconnect();
        }
    }

    private static List<String> append(List<String> command, String... more) {
        List<String> all = new ArrayList<>(command);
        Collections.addAll(all, more);
        return all;
    }

    /** Thrown, not exited on, so that the finally blocks stop the gateway and the backends. */
    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new SmokeFailure(what);
        }
    }

    private static final class SmokeFailure extends RuntimeException {
        private static final long serialVersionUID = 1L;

        SmokeFailure(String what) {
            super(what);
        }
    }

    /** A trivial gRPC server standing in for a user's Spark Connect pod: names itself in each answer. */
    private static final class Backend {
        final String name;
        final Server server;
        /** The headers of each call that reached it. */
        final List<Metadata> calls = new CopyOnWriteArrayList<>();

        private Backend(String name, Server server) {
            this.name = name;
            this.server = server;
        }

        static Backend start(String user) throws IOException {
            String name = user + "'s pod";
            AtomicReference<Backend> self = new AtomicReference<>();
            Context.Key<Metadata> headersKey = Context.key("headers");
            ServerServiceDefinition echo = ServerServiceDefinition.builder(SERVICE)
                    .addMethod(CALL, ServerCalls.asyncUnaryCall((request, answer) -> {
                        self.get().calls.add(headersKey.get());
                        answer.onNext((name + " answers: " + new String(request, StandardCharsets.UTF_8))
                                .getBytes(StandardCharsets.UTF_8));
                        answer.onCompleted();
                    }))
                    .build();
            ServerInterceptor keepHeaders = new ServerInterceptor() {
                @Override
                public <Q, A> ServerCall.Listener<Q> interceptCall(ServerCall<Q, A> call, Metadata headers,
                        ServerCallHandler<Q, A> next) {
                    return Contexts.interceptCall(Context.current().withValue(headersKey, headers), call, headers, next);
                }
            };
            Server server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
                    .addService(ServerInterceptors.intercept(echo, keepHeaders))
                    .build()
                    .start();
            self.set(new Backend(name, server));
            return self.get();
        }

        int port() {
            return server.getPort();
        }
    }

    /** A started command whose output (stdout and stderr, merged) is collected line by line. */
    private static final class Run {
        final Process process;
        private final List<String> lines = new CopyOnWriteArrayList<>();
        private final Thread pump;

        private Run(Process process) {
            this.process = process;
            this.pump = new Thread(() -> {
                try (BufferedReader r = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                    for (String line = r.readLine(); line != null; line = r.readLine()) {
                        lines.add(line);
                    }
                } catch (IOException e) {
                    lines.add("(output unreadable: " + e + ")");
                }
            }, "gateway-output");
            pump.setDaemon(true);
            pump.start();
        }

        /**
         * Starts {@code command} with an environment of PATH (and the cross roots' location) only:
         * no variable of the build's own environment reaches the gateway's settings.
         */
        static Run start(List<String> command) throws IOException {
            ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
            Map<String, String> env = pb.environment();
            env.keySet().retainAll(List.of("PATH", "KBASE_CROSS_CACHE"));
            return new Run(pb.start());
        }

        long pid() {
            return process.pid();
        }

        /** The exit status, waiting at most {@code seconds}; output fully read. */
        int waitFor(long seconds) throws InterruptedException {
            if (!process.waitFor(seconds, TimeUnit.SECONDS)) {
                process.destroyForcibly();
                check(false, "the gateway command did not finish within " + seconds + " s:\n" + output());
            }
            pump.join(10_000);
            return process.exitValue();
        }

        /** The first output line matching {@code pattern}, waiting at most {@code seconds}. */
        Matcher awaitLine(Pattern pattern, long seconds) throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
            while (true) {
                for (String line : lines) {
                    Matcher m = pattern.matcher(line);
                    if (m.find()) {
                        return m;
                    }
                }
                if (!process.isAlive() && !pump.isAlive()) {
                    check(false, "the gateway exited with " + process.exitValue() + " before printing /" + pattern
                            + "/:\n" + output());
                }
                check(System.nanoTime() < deadline, "no line /" + pattern + "/ within " + seconds + " s:\n" + output());
                Thread.sleep(20);
            }
        }

        String output() {
            return String.join("\n", lines);
        }
    }

    private static final class Bytes implements MethodDescriptor.Marshaller<byte[]> {
        @Override
        public InputStream stream(byte[] value) {
            return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
            try {
                return stream.readAllBytes();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }
}
