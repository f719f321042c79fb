//! Passwords off the command line.
//!
//! A password inside `--database-url` is readable by every user of the machine for as long as
//! the process runs (`ps`, `/proc/PID/cmdline`). When one is given, the process starts itself
//! again at once, before it does anything else, with the password taken out of the URL and put
//! in `PGPASSWORD` (which only the process's own user can read, in `/proc/PID/environ`), so the
//! command line that stays visible holds none. A URL's password wins over `PGPASSWORD`, as in
//! libpq, so the new process connects exactly as the URL said.

use std::ffi::OsString;

use krakenbook::store::{DbTarget, redact};

/// The arguments with every `--database-url` password removed, and the password, when any
/// argument held one that can be moved (`None`: nothing to do).
pub fn without_password(args: &[OsString]) -> Option<(Vec<OsString>, String)> {
    let mut out = Vec::with_capacity(args.len());
    let mut password = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_str().unwrap_or_default();
        if arg == "--database-url"
            && let Some(value) = args.get(i + 1).and_then(|v| v.to_str())
            && let Some((url, pw)) = strip(value)
        {
            out.push(args[i].clone());
            out.push(url.into());
            password = Some(pw);
            i += 2;
            continue;
        }
        if let Some(value) = arg.strip_prefix("--database-url=")
            && let Some((url, pw)) = strip(value)
        {
            out.push(format!("--database-url={url}").into());
            password = Some(pw);
            i += 1;
            continue;
        }
        out.push(args[i].clone());
        i += 1;
    }
    password.map(|pw| (out, pw))
}

/// A connection string without its password, and the password; `None` when it holds none, or
/// one that cannot be taken out cleanly (then it stays, and the warning says where to put it).
fn strip(url: &str) -> Option<(String, String)> {
    let target = DbTarget::parse(url).ok()?;
    let password = String::from_utf8(target.config().get_password()?.to_vec()).ok()?;
    let redacted = redact(url);
    let stripped = if redacted.contains("://") || !redacted.contains('=') || redacted.contains('@')
    {
        // URL form: `user:***@` in the user info, `password=***` among the query parameters.
        let no_userinfo = redacted.replacen(":***@", "@", 1);
        match no_userinfo.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|p| !p.ends_with("=***")).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => no_userinfo,
        }
    } else {
        redacted
            .split(' ')
            .filter(|t| !t.ends_with("=***"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Only when the result is the same target without a password.
    let check = DbTarget::parse(&stripped).ok()?;
    if stripped.contains("***") || check.config().get_password().is_some() {
        return None;
    }
    Some((stripped, password))
}

/// When an argument holds a database password, starts this program again without it (see the
/// module doc); returns only when there is nothing to do or the new start failed.
pub fn move_password_off_the_command_line() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some((clean, password)) = without_password(&args) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    eprintln!(
        "krakenbook: the password in --database-url was moved to PGPASSWORD, out of the command \
         line every user of this machine can read; next time give it in PGPASSWORD, ~/.pgpass or \
         the settings file (chmod 600)"
    );
    let error = std::process::Command::new(exe)
        .arg0(
            clean
                .first()
                .cloned()
                .unwrap_or_else(|| "krakenbook".into()),
        )
        .args(&clean[1..])
        .env("PGPASSWORD", password)
        .exec();
    eprintln!(
        "krakenbook: could not start again without the password in its arguments ({error}); going on"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_form_of_password_is_taken_out_and_the_rest_kept() {
        for (url, expected, password) in [
            (
                "postgres://kb:hunter2@db:5432/market?sslmode=require",
                "postgres://kb@db:5432/market?sslmode=require",
                "hunter2",
            ),
            (
                "postgresql://kb:p%40ss@db/market",
                "postgresql://kb@db/market",
                "p@ss",
            ),
            (
                "postgres://kb@db/market?password=s3cret&sslmode=disable",
                "postgres://kb@db/market?sslmode=disable",
                "s3cret",
            ),
            (
                "host=db user=kb password=hunter2 dbname=market",
                "host=db user=kb dbname=market",
                "hunter2",
            ),
        ] {
            let (clean, pw) = without_password(&args(&[
                "krakenbook",
                "collect",
                "--database-url",
                url,
                "--symbols",
                "BTC/USD",
            ]))
            .unwrap_or_else(|| panic!("{url}"));
            assert_eq!(
                clean,
                args(&[
                    "krakenbook",
                    "collect",
                    "--database-url",
                    expected,
                    "--symbols",
                    "BTC/USD"
                ]),
                "{url}"
            );
            assert_eq!(pw, password, "{url}");
        }
        let (clean, _) = without_password(&args(&[
            "krakenbook",
            "--database-url=postgres://kb:x@db/m",
        ]))
        .unwrap();
        assert_eq!(
            clean,
            args(&["krakenbook", "--database-url=postgres://kb@db/m"])
        );
    }

    #[test]
    fn nothing_happens_without_a_password() {
        for list in [
            vec![
                "krakenbook",
                "collect",
                "--database-url",
                "postgres://kb@db/market",
            ],
            vec!["krakenbook", "collect", "--symbols", "BTC/USD"],
            vec!["krakenbook", "collect", "--database-url"],
        ] {
            assert!(without_password(&args(&list)).is_none(), "{list:?}");
        }
    }
}
