//! TLS to the database: the modes encrypt and verify as libpq's do, against a cluster of the
//! test's own serving a certificate signed by a CA the test makes.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use krakenbook::store::{self, MigrateOptions, Writer, WriterConfig};

use super::assert_stored_once;
use crate::db::{connect, fixture_records, own_cluster};

// ---------------------------------------------------------------------------------------------
// TLS.

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for `localhost` signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=krakenbook test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test]
async fn tls_modes_encrypt_and_verify_as_libpq_does() {
    let cluster = own_cluster();
    let dir = cluster.root().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    // The server reads its key as its own user, and only a private key file.
    let owner = std::fs::metadata(cluster.root().join("data")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for f in ["server.key", "server.pem"] {
        std::os::unix::fs::chown(dir.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let admin = connect(&cluster.url("postgres")).await;
    for sql in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.pem").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    for _ in 0..100 {
        let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = dir.join("ca.pem").display().to_string();
    let port = cluster.port();
    let url =
        |host: &str, query: &str| format!("postgres://postgres:pw@{host}:{port}/postgres?{query}");
    let encrypted = |client: Client| async move {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    // (URL, connects, encrypted)
    let cases = [
        (url("127.0.0.1", "sslmode=disable"), true, false),
        (url("127.0.0.1", ""), true, true),
        (url("127.0.0.1", "sslmode=require"), true, true),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
            true,
        ),
        (
            url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            true,
            true,
        ),
        (
            url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")),
            true,
            true,
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            false,
            false,
        ),
        // Not signed by a public root.
        (url("localhost", "sslmode=verify-full"), false, false),
        (url("localhost", "sslmode=verify-ca"), false, false),
    ];
    for (u, connects, want_tls) in cases {
        match store::connect(&u, "krakenbook tls test").await {
            Ok(client) => {
                assert!(connects, "{u} should have been refused");
                assert_eq!(encrypted(client).await, want_tls, "{u}");
            }
            Err(e) => {
                assert!(!connects, "{u}: {e}");
                assert!(
                    !e.is_retriable(),
                    "{u}: a certificate problem is not retried: {e}"
                );
                assert!(!e.to_string().contains(":pw@"), "{e}");
                assert!(e.to_string().contains("certificate"), "{u}: {e}");
            }
        }
    }
    let e = store::connect(
        &url(
            "localhost",
            "sslmode=verify-full&sslrootcert=/no/such/ca.pem",
        ),
        "t",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");

    // The writer over verified TLS.
    let verified = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    store::migrate(
        &store::connect(&verified, "t").await.unwrap(),
        &MigrateOptions::default(),
    )
    .await
    .unwrap();
    let records = fixture_records();
    let mut w = Writer::new(&verified, WriterConfig::new("tls")).unwrap();
    w.write_batch(&records[..300]).await.unwrap();
    assert_stored_once(&admin, &records[..300]).await;
}
