//! salesplanctl: plans, deals, intake and reports from a terminal. Tables for people,
//! `--json` for scripts, the server's own error message on failure, and exit codes scripts
//! can branch on (see `exit_code`).
#![forbid(unsafe_code)]

mod args;
mod commands;
mod managers;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    // A command line clap refuses is the caller's mistake like any other (exit 4); help and
    // version are answers (exit 0).
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 4 } else { 0 });
        }
    };
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code(&err);
            match err.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!(
                    "error: {}: {}",
                    output::code_name(status.code()),
                    status.message()
                ),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::from(code)
        }
    }
}

/// 1 other, 3 not found, 4 invalid argument (the server's, or the CLI's own refusal), 5 not allowed (auth or permission),
/// 6 conflict (stale version, already exists, precondition), 69 unavailable.
fn exit_code(err: &anyhow::Error) -> u8 {
    use tonic::Code;
    if err.downcast_ref::<args::Usage>().is_some() {
        return 4;
    }
    match err.downcast_ref::<tonic::Status>().map(|s| s.code()) {
        Some(Code::NotFound) => 3,
        Some(Code::InvalidArgument) => 4,
        Some(Code::Unauthenticated | Code::PermissionDenied) => 5,
        Some(Code::Aborted | Code::AlreadyExists | Code::FailedPrecondition) => 6,
        Some(Code::Unavailable) => 69,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::exit_code;
    use tonic::{Code, Status};

    /// Every code a script may branch on maps to its documented exit code; the end-to-end
    /// test reaches FAILED_PRECONDITION, the other two conflicts only arise from races.
    #[test]
    fn each_status_code_has_its_exit_code() {
        let code = |c: Code| exit_code(&anyhow::Error::new(Status::new(c, "x")));
        assert_eq!(code(Code::NotFound), 3);
        assert_eq!(code(Code::InvalidArgument), 4);
        assert_eq!(code(Code::Unauthenticated), 5);
        assert_eq!(code(Code::PermissionDenied), 5);
        assert_eq!(code(Code::Aborted), 6);
        assert_eq!(code(Code::AlreadyExists), 6);
        assert_eq!(code(Code::FailedPrecondition), 6);
        assert_eq!(code(Code::Unavailable), 69);
        assert_eq!(code(Code::Internal), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("no status")), 1);
        assert_eq!(exit_code(&crate::args::usage!("--by: \"x\"")), 4);
    }
}
