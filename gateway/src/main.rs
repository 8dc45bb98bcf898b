//! The `kbase-spark-gateway` binary: settings from the command line and the environment, then
//! serve until SIGTERM or SIGINT, drain, exit 0. Exit status 2: the settings were refused; 1:
//! start-up failed (a port taken, a TLS file unusable).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use kbase_spark_gateway::server;
use kbase_spark_gateway::settings::{self, Command, Config, PROGRAM};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let env: HashMap<String, String> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let args = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned());
    match settings::parse(args, &env) {
        Ok(Command::Run(cfg)) => run(*cfg),
        Ok(Command::Help(text)) | Ok(Command::Version(text)) => {
            // A closed pipe (`| head`) is not an error here.
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cfg: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A line that cannot be written (nobody reads stderr any more) is lost; reporting that on
        // the same stderr would panic the thread that logs, and the process with it.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("gateway").build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot listen for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{PROGRAM} cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
        running.shutdown();
        running.stopped().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
