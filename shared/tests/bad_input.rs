//! Bad input to what masters and workers parse gets an error, never a panic:
//! configuration files mutated at random, and random wire messages.

use proptest::prelude::*;
use shared::config::{Config, load_worker_file};
use shared::wire::{self, ControlMessage, Doorbell, RpcReply, RpcRequest, WorkerEvent};

const SETTINGS: &str = "database_url: postgres://x@127.0.0.1/x\namqp_url: amqp://127.0.0.1\nredis_url: redis://127.0.0.1\n\
workers:\n  - name: w1\n    password: long-enough-password\nbuilds:\n  lease_seconds: 60\n  heartbeat_seconds: 5\n";

const MASTER: &str = "factories:\n  F:\n    steps:\n      - name: s\n        command: [\"true\"]\n        env: {A: b}\n\
        timeout: 30\n        decode_rc: {0: SUCCESS, 5: WARNINGS}\nbuilders:\n  - name: b\n    factory: F\n    workers: [w1]\n\
    tags: [x]\nschedulers:\n  - type: force\n    name: force\n    builders: [b]\n";

const WORKER: &str =
    "name: w1\npassword: long-enough-password\namqp_url: amqp://127.0.0.1\nredis_url: redis://127.0.0.1\n";

/// A text with a few random edits: characters inserted, deleted, replaced.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    let edits = prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0u8..3,
            prop::sample::select(vec![
                ':', ' ', '\n', '-', '[', ']', '{', '}', '"', '\'', '#', '&', '*', '!', '|', '>', '\t', 'x', '0', '%',
                '\u{0}', 'é',
            ]),
        ),
        1..6,
    );
    edits.prop_map(move |edits| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, kind, c) in edits {
            let at = at.index(chars.len().max(1)).min(chars.len());
            match kind {
                0 => chars.insert(at, c),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
        }
        chars.into_iter().collect()
    })
}

/// Every error names its file and, past reading it, a line and column.
fn check_errors(errors: &str) {
    for line in errors.lines().filter(|l| !l.starts_with(' ') && !l.is_empty()) {
        assert!(line.contains(".yaml"), "an error without its file: {line}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_configuration_loads_or_says_where_it_is_wrong(settings in mutated(SETTINGS), master in mutated(MASTER)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("settings.yaml"), &settings).unwrap();
        std::fs::write(dir.path().join("master.yaml"), &master).unwrap();
        if let Err(errors) = Config::load(&dir.path().join("settings.yaml")) {
            prop_assert!(!errors.0.is_empty());
            check_errors(&errors.to_string());
        }
    }

    #[test]
    fn a_mutated_worker_file_loads_or_says_where_it_is_wrong(worker in mutated(WORKER)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("worker.yaml"), &worker).unwrap();
        if let Err(errors) = load_worker_file(&dir.path().join("worker.yaml")) {
            check_errors(&errors.to_string());
        }
    }

    #[test]
    fn random_bytes_are_never_a_wire_message_that_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode::<WorkerEvent>(&bytes);
        let _ = wire::decode::<RpcRequest>(&bytes);
        let _ = wire::decode::<RpcReply>(&bytes);
        let _ = wire::decode::<Doorbell>(&bytes);
        let _ = wire::decode::<ControlMessage>(&bytes);
    }

    #[test]
    fn a_valid_event_with_random_values_round_trips(
        worker in "[a-z0-9._-]{1,20}",
        build_id in any::<i64>(),
        seq in any::<i64>(),
        name in any::<String>(),
        state in any::<String>(),
        number in any::<i32>(),
    ) {
        let step = wire::StepRecord {
            number, name, started_at: None, finished_at: None, results: None, state_string: state, logs: Vec::new(),
            test_summary: None, files: Vec::new(), properties: Default::default(),
        };
        let event = WorkerEvent::StepStarted {
            worker: worker.into(),
            build_id: shared::ids::BuildId(build_id),
            seq,
            step,
            sent_at: None,
        };
        prop_assert_eq!(wire::decode::<WorkerEvent>(&wire::encode(&event)).unwrap(), event);
    }
}
