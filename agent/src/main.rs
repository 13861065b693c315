//! `virtmail-agent`: the delivery agent beside Postfix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use virtmail_agent::check::{CheckStatus, check};

#[derive(Debug, Parser)]
#[command(name = "virtmail-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate resource manifests: print a summary and every diagnostic. Exit 0 when all objects
    /// are valid, 1 when any is invalid, 2 when the manifests cannot be read.
    Check {
        /// Directory (or file) of YAML manifests; `*.yaml` and `*.yml`, several documents each.
        #[arg(long)]
        resources: PathBuf,
        /// MailServer to compile for (default: the only one, or an empty default server).
        #[arg(long)]
        server: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { resources, server } => {
            let report = check(&resources, server.as_deref());
            if report.status == CheckStatus::Unusable {
                eprint!("{}", report.text);
            } else {
                print!("{}", report.text);
            }
            ExitCode::from(report.status as u8)
        }
    }
}
