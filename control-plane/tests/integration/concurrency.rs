//! 50 parallel writers through the API: no duplicate names, no lost updates.

use std::sync::Arc;

use serde_json::{Value, json};

use super::harness::{TestCp, both_backends, settings};

const WRITERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_writers_no_duplicates_no_lost_updates() {
    for (backend, db) in both_backends().await {
        let cp = Arc::new(TestCp::start(settings(&db)).await);

        // Everyone races to create the same name, plus one of their own.
        let mut tasks = Vec::new();
        for i in 0..WRITERS {
            let cp = cp.clone();
            tasks.push(tokio::spawn(async move {
                let same = cp
                    .post(
                        "/prompts",
                        json!({"name": "contended", "template": format!("by {i}")}),
                    )
                    .await
                    .0;
                let own = cp
                    .post("/prompts", json!({"name": format!("own-{i:02}")}))
                    .await
                    .0;
                (same, own)
            }));
        }
        let mut created = 0;
        for t in tasks {
            let (same, own) = t.await.unwrap();
            assert!(same == 201 || same == 409, "{backend}: unexpected {same}");
            created += usize::from(same == 201);
            assert_eq!(own, 201, "{backend}");
        }
        assert_eq!(created, 1, "{backend}: exactly one writer wins the name");
        let (_, page) = cp.get("/prompts?limit=500").await;
        let names: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), WRITERS + 1, "{backend}");
        assert_eq!(names.iter().filter(|n| **n == "contended").count(), 1);

        // Read-modify-write of one item by everyone, with the optimistic version.
        let (_, p) = cp.post("/prompts", json!({"name": "counter"})).await;
        let id = p["id"].as_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for i in 0..WRITERS {
            let cp = cp.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                loop {
                    let (_, cur) = cp.get(&format!("/prompts/{id}")).await;
                    let mut args = cur["arguments"].as_array().cloned().unwrap_or_default();
                    args.push(json!({"name": format!("w{i}")}));
                    let (status, body) = cp
                        .put(
                            &format!("/prompts/{id}"),
                            json!({"arguments": args, "version": cur["version"]}),
                        )
                        .await;
                    match status {
                        200 => return conflicts,
                        409 => {
                            assert_eq!(body["type"], "urn:mcpgw:problem:version-conflict");
                            conflicts += 1;
                        }
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
            }));
        }
        let mut conflicts = 0;
        for t in tasks {
            conflicts += t.await.unwrap();
        }
        let (_, fin) = cp.get(&format!("/prompts/{id}")).await;
        let mut got: Vec<String> = fin["arguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a: &Value| a["name"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..WRITERS).map(|i| format!("w{i}")).collect();
        want.sort();
        assert_eq!(
            got, want,
            "{backend}: every update survived ({conflicts} conflicts retried)"
        );
        assert_eq!(fin["version"], json!(1 + WRITERS as i64), "{backend}");
        drop(cp);
    }
}
