//! `lockyard exec --redis` and `status --redis` against a private 3-master
//! Redis Cluster: one node's URL (detected) and a `redis+cluster://` seed
//! list; mutual exclusion across processes with a shared counter on names
//! spread over every master; `status` lists the locks of every master.
#![cfg(all(feature = "redis", unix))]

mod cli_support;

use cli_support::*;
use lockyard_testkit::cluster::RedisCluster;

/// One name per master.
fn spread(c: &RedisCluster) -> Vec<String> {
    let mut by = std::collections::BTreeMap::new();
    for i in 0..10_000 {
        let name = format!("cli-{i}");
        by.entry(c.master_of(&format!("lockyard:{{{name}}}:lock")))
            .or_insert(name);
        if by.len() == c.masters() {
            return by.into_values().collect();
        }
    }
    panic!("could not spread names");
}

#[test]
fn exec_excludes_across_processes_on_every_master() {
    let c = RedisCluster::start(3, 0);
    let env = Env::new();
    let names = spread(&c);
    // Four processes per name, each incrementing its name's counter file
    // three times under the lock with a pause between read and write: any
    // overlap loses an increment.
    let urls = [c.url(), c.cluster_url()];
    let mut children = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let counter = env.path(&format!("counter-{n}"));
        std::fs::write(&counter, "0").unwrap();
        for p in 0..4 {
            let script = format!(
                "for i in 1 2 3; do lockyard_n=$(cat '{f}'); sleep 0.02; echo $((lockyard_n+1)) > '{f}'; done",
                f = counter.display()
            );
            // Inner loop under one lock would not contend enough: each
            // process takes the lock three times.
            let child = env.spawn(&[
                "exec",
                "--redis",
                &urls[p % 2],
                "--timeout",
                "60s",
                name,
                "--",
                "sh",
                "-c",
                &script,
            ]);
            children.push(child);
        }
    }
    for mut child in children {
        let status = wait_child(&mut child, PATIENCE * 3);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert_eq!(status.code(), Some(0), "{err}");
    }
    for (n, name) in names.iter().enumerate() {
        let v = read(&env.path(&format!("counter-{n}")));
        assert_eq!(v.trim(), "12", "{name}: increments were lost");
    }
}

#[test]
fn status_lists_the_locks_of_every_master() {
    let c = RedisCluster::start(3, 0);
    let env = Env::new();
    let names = spread(&c);
    let mut holders = Vec::new();
    for name in &names {
        holders.push(env.hold(name, &["--redis", &c.url(), "--ttl", "5s"]));
    }
    for url in [c.url(), c.cluster_url()] {
        let out = env.run(&["status", "--redis", &url, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let rows = v.as_array().expect("array");
        for (name, h) in names.iter().zip(&holders) {
            let row = rows
                .iter()
                .find(|r| r["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{name} missing from {v}"));
            assert_eq!(row["held"], true);
            assert_eq!(row["pid"], h.pid(), "{row}");
        }
    }
    for mut h in holders {
        h.kill();
    }
}
