//! `maestro-agent`: runs inside every Maestro step pod.

mod builtin;
mod exec;
mod install;
mod logging;
mod outputs;
mod result;
mod step_env;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exec::{StepCommand, run_step_command};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult, write_result};
use crate::step_env::StepPaths;

/// Maestro's agent: runs a step's command or built-in task inside its pod and reports the
/// result to the operator through the pod's termination message.
#[derive(Parser, Debug)]
#[command(name = "maestro-agent", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy this executable to DIR/maestro-agent (run by the step pod's init container).
    Install {
        /// The directory shared with the step's main container, e.g. /maestro/bin.
        dir: PathBuf,
    },
    /// Run a command as the step (`maestro-agent exec -- COMMAND ARGS...`): forward signals to
    /// it, collect its outputs from $MAESTRO_OUTPUTS and write the result to
    /// $MAESTRO_RESULT_PATH.
    Exec {
        /// The command and its arguments, after `--`.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Run a built-in task (shell, git, http, ec2-provision, ec2-deprovision, notify,
    /// container) with the inputs in $MAESTRO_INPUTS.
    Builtin {
        /// The built-in task's name.
        name: String,
    },
    /// Run a library Task whose image is not the agent's (maven, tomcat-deploy) with the
    /// inputs in $MAESTRO_INPUTS: the Task's command, under `maestro-agent exec`, which
    /// collects its outputs and report from $MAESTRO_OUTPUTS and $MAESTRO_REPORT.
    Task {
        /// The library Task's name.
        name: String,
    },
    /// Print the agent's version and exit.
    Version,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init_logging();
    match args.command {
        Command::Install { dir } => match install::install_current_exe(&dir) {
            Ok(installed) => {
                tracing::debug!(path = %installed.display(), "agent installed");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("maestro-agent: error: install failed: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Exec { command } => run_step(|paths| async move {
            let mut parts = command.into_iter();
            match parts.next() {
                Some(program) => {
                    let command = StepCommand::new(program, parts);
                    run_step_command(&command, &paths.outputs_dir).await
                }
                // clap requires at least one value; kept as a result rather than a panic.
                None => StepResult::failure(EXIT_BAD_INPUT, "no command given to exec"),
            }
        }),
        Command::Builtin { name } => {
            run_step(|paths| async move { builtin::run_builtin(&name, &paths).await })
        }
        Command::Task { name } => run_library_task(&name),
        Command::Version => {
            println!("maestro-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// Runs a library Task and hands its result to the exec wrapper around this process.
fn run_library_task(name: &str) -> ExitCode {
    let paths = StepPaths::from_process_env();
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(builtin::run_library_task(name, &paths)),
        Err(error) => StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("cannot start the agent's runtime: {error}"),
        ),
    };
    let report_path = std::env::var_os(step_env::REPORT_VAR)
        .filter(|value| !value.is_empty())
        .map_or_else(
            || paths.outputs_dir.join(step_env::REPORT_FILE),
            PathBuf::from,
        );
    let exit_code = outputs::write_for_exec(&result, &paths.outputs_dir, &report_path);
    ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
}

/// Runs a step to its result, writes the result, and returns the agent's exit code.
fn run_step<Step, StepFuture>(step: Step) -> ExitCode
where
    Step: FnOnce(StepPaths) -> StepFuture,
    StepFuture: Future<Output = StepResult>,
{
    let paths = StepPaths::from_process_env();
    // One thread is plenty to wait for one child, and keeps the agent light in every pod.
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(step(paths.clone())),
        Err(error) => StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("cannot start the agent's runtime: {error}"),
        ),
    };
    let exit_code = write_result(&result, &paths.result_path);
    // Exit codes are 0..=255 on Unix; anything else would be a bug, reported as a failure.
    ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
}
