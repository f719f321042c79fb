//! The `--database-url` argument, once: every command that reads or writes the database
//! flattens [`DbArgs`], so the flag, its `DATABASE_URL` environment variable (whose value help
//! never prints) and its help are the same everywhere, and [`DbArgs::url`] is the one place a
//! missing database becomes an error that says how to give one.
//!
//! A password in the flag never reaches this code in a running process: `secret.rs` moves it to
//! `PGPASSWORD` before clap parses (libpq's `PGPASSWORD` and `~/.pgpass` are read by the store).

use clap::Args;

/// `--database-url URL` (or `DATABASE_URL`).
#[derive(Debug, Clone, Default, Args)]
pub struct DbArgs {
    /// The database: postgres://user@host:port/database (sslmode=disable, prefer, require,
    /// verify-ca or verify-full; sslrootcert=FILE); the password from PGPASSWORD or ~/.pgpass.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
}

impl DbArgs {
    /// The URL given, if any (an empty one counts as none).
    pub fn given(&self) -> Option<String> {
        self.database_url.clone().filter(|u| !u.trim().is_empty())
    }

    /// The URL from the flag or `DATABASE_URL`, or a one-line error saying how to give one.
    pub fn url(&self) -> anyhow::Result<String> {
        self.given().ok_or_else(|| {
            anyhow::anyhow!(
                "no database given: use --database-url postgres://user@host:port/database or set DATABASE_URL (the password from PGPASSWORD or ~/.pgpass)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn a_missing_or_empty_database_url_says_how_to_give_one() {
        for argv in [vec!["x"], vec!["x", "--database-url", " "]] {
            let w = Wrap::try_parse_from(argv).unwrap();
            let err = w.db.url().unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{err}");
        }
        let w = Wrap::try_parse_from(["x", "--database-url=postgres://kb@h/db"]).unwrap();
        assert_eq!(w.db.url().unwrap(), "postgres://kb@h/db");
    }
}
