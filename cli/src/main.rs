//! The `cruster` binary: parses the command line and runs it (see the `cruster_cli` docs).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cruster_cli::Cli::parse();
    match cruster_cli::run(&cli) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
