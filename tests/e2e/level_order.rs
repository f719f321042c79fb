//! Kraken's level order as the real captures show it, checked with a client that truncates its
//! book after every level ([`LevelClient`]): every message of every capture verifies.

use krakenbook::record::RecordBody;
use krakenbook_testkit::capture::read_capture;

use crate::support::fixtures;
use krakenbook_testkit::sim_client::LevelClient;

#[test]
fn a_client_truncating_after_each_level_verifies_every_message_of_the_real_captures() {
    let mut verified = 0;
    for path in fixtures() {
        let header = std::fs::read_to_string(&path).unwrap();
        let header: serde_json::Value =
            serde_json::from_str(header.lines().next().unwrap()).unwrap();
        let depth = header["depth"].as_u64().unwrap() as usize;
        let mut client = LevelClient::new(depth);
        let records = read_capture(&path, &mut 1, 1).unwrap();
        for r in &records {
            if let RecordBody::Frame(f) = &r.body {
                client.observe(std::str::from_utf8(&f.bytes).unwrap());
            }
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            client.mismatches.is_empty(),
            "{name}: {:?}",
            client.mismatches
        );
        assert_eq!(
            client.ok + client.unsynced,
            client.total(),
            "{name}: every book message verified, or came before any snapshot"
        );
        if name.contains("20260817") {
            // Starts mid-stream: nothing can be verified.
            assert_eq!(client.ok, 0, "{name}");
        } else {
            assert_eq!(client.unsynced, 0, "{name}");
        }
        verified += client.ok;
    }
    assert!(verified > 4800, "{verified} messages verified");
}
