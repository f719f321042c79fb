//! The `krakenbook` binary: parse the command line, set up logging, run, exit.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::secret::move_password_off_the_command_line();
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    warn_of_password_on_command_line(std::env::args());
    // Sockets, segment files and database connections share one descriptor table: take what
    // the system allows (the soft limit is often 1,024 where the hard one is far higher), so a
    // flood of connections to the metrics port cannot starve the journal.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(error = %e, "cannot raise the open-file limit");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::from(2)
        }
    }
}

/// A password given in `--database-url` is visible to every user of the machine (`ps`,
/// `/proc/PID/cmdline`): say so, and where to put it instead.
fn warn_of_password_on_command_line(args: impl Iterator<Item = String>) {
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let value = if arg == "--database-url" {
            args.peek().cloned()
        } else {
            arg.strip_prefix("--database-url=").map(str::to_owned)
        };
        if value
            .as_deref()
            .is_some_and(krakenbook::config::holds_password)
        {
            tracing::warn!(
                "the password in --database-url is visible to every user of this machine (ps); \
                 give it in PGPASSWORD, ~/.pgpass (PGPASSFILE) or the settings file (chmod 600) instead"
            );
            return;
        }
    }
}

/// An error and its causes on one line, each cause said once: library errors often repeat their
/// source's text in their own message, which `{:#}` would print again.
fn render_error(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render_error;

    #[derive(Debug, thiserror::Error)]
    #[error("journal I/O error on /x: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn an_error_prints_each_cause_once() {
        let io = std::io::Error::other("No space left on device");
        let e = anyhow::Error::new(Outer { source: io }).context("collect stopped");
        assert_eq!(
            render_error(&e),
            "collect stopped: journal I/O error on /x: No space left on device"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render_error(&plain), "outer: inner");
    }
}
