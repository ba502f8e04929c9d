//! The gateway's parsing at the HTTP level, fuzzed over real loopback: valid uploads (multipart with
//! fields, `filename` / `filename*`, raw bodies) with fuzzed query parameters, headers (`Upload-Length`,
//! `Digest`, `Content-Type`), names, and byte mutations of the multipart framing. Every answer is a
//! 201 whose file the emulator holds, or a 4xx with a code documented in openapi.yaml: never a 5xx,
//! never a hang. The pure parsers get 10^5 cases each in src/routes/fuzz.rs; this runs
//! `FUZZ_HTTP_CASES` requests (default 1000).
use std::time::Duration;

use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;

use crate::support::*;

#[derive(Debug, Clone)]
struct Case {
    raw: bool,
    name: String,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, Vec<u8>)>,
    boundary: String,
    fields: Vec<(String, String)>,
    filename: String,
    data: Vec<u8>,
    mutations: Vec<(usize, u8, u8)>,
}

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,7}",
        "error|version|rename",
        "[0-9a-f]{40}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](Z|\\+0[0-9]:00)",
        "\\PC{0,16}",
        Just(String::new()),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let keys = "name|size|on_conflict|sha1|content_created_at|content_modified_at|other";
    (
        any::<bool>(),
        prop_oneof!["[A-Za-z0-9 ._()-]{1,20}", "\\PC{0,20}", "[ ./\\\\%]{1,4}"],
        prop::collection::vec((keys, param_value()), 0..3),
        prop::collection::vec(
            (
                prop_oneof![Just("upload-length"), Just("digest")],
                prop_oneof![
                    "[0-9]{1,8}".prop_map(String::into_bytes),
                    "sha=[A-Za-z0-9+/]{26,28}=?".prop_map(String::into_bytes),
                    prop::collection::vec(32u8..127, 0..20),
                ],
            ),
            0..2,
        ),
        prop_oneof![
            4 => "[A-Za-z0-9'()+_,./:=?-]{1,40}",
            1 => "[ -~]{0,12}",
        ],
        prop::collection::vec((keys, param_value()), 0..3),
        prop_oneof![
            "[A-Za-z0-9 ._-]{1,20}".prop_map(|n| format!("filename=\"{n}\"")),
            "\\PC{0,12}".prop_map(|n| format!("filename=\"{n}\"")),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| {
                let enc: String = b.iter().map(|x| format!("%{x:02X}")).collect();
                format!("filename*=UTF-8''{enc}")
            }),
            "(utf-8|ISO-8859-1|x)'[a-z]{0,2}'[A-Za-z0-9%]{0,12}".prop_map(|v| format!("filename*={v}")),
        ],
        prop::collection::vec(any::<u8>(), 0..3000),
        prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 0..3),
    )
        .prop_map(
            |(raw, name, query, headers, boundary, fields, filename, data, mutations)| Case {
                raw,
                name,
                query,
                headers,
                boundary,
                fields,
                filename,
                data,
                mutations,
            },
        )
}

impl Case {
    fn body(&self) -> Vec<u8> {
        if self.raw {
            return self.data.clone();
        }
        let b = &self.boundary;
        let mut body = Vec::new();
        for (k, v) in &self.fields {
            body.extend(
                format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").bytes(),
            );
        }
        body.extend(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"file\"; {}\r\n\r\n",
                self.filename
            )
            .bytes(),
        );
        let framing = body.len();
        body.extend_from_slice(&self.data);
        body.extend(format!("\r\n--{b}--\r\n").bytes());
        // Mutations land in the framing (before the file's data or in the closing delimiter), where
        // parsing happens; a mutation of the data is just another file.
        for &(at, kind, byte) in &self.mutations {
            let tail = body.len() - framing - self.data.len();
            let spots = framing + tail;
            let i = at % spots.max(1);
            let i = if i < framing {
                i
            } else {
                i - framing + framing + self.data.len()
            };
            match kind {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i.min(body.len()), byte),
                _ if i < body.len() => {
                    body.remove(i);
                }
                _ => {}
            }
        }
        body
    }

    fn request(&self, app: &TestApp, http: &reqwest::Client) -> reqwest::RequestBuilder {
        let request = if self.raw {
            let name: String = self.name.bytes().map(|b| format!("%{b:02X}")).collect();
            http.put(format!("{}/{name}", app.folder_url("0")))
        } else {
            http.post(app.folder_url("0")).header(
                "content-type",
                format!("multipart/form-data; boundary={}", self.boundary),
            )
        };
        let mut request = request.query(&self.query).body(self.body());
        for (name, value) in &self.headers {
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(value) {
                request = request.header(*name, v);
            }
        }
        request
    }
}

/// The stable codes listed by openapi.yaml's `ErrorCode`.
fn documented_codes() -> Vec<String> {
    let openapi = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let at = openapi
        .find("    ErrorCode:")
        .expect("openapi.yaml lists ErrorCode");
    openapi[at..]
        .lines()
        .skip_while(|l| l.trim() != "enum:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- "))
        .map(|l| l.trim_start().trim_start_matches("- ").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_get_a_201_or_a_documented_4xx() {
    let cases: usize = env_or("FUZZ_HTTP_CASES", 1000);
    let app = spawn_app_with(Options {
        // Declared sizes are fuzzed: a cap keeps Box from being asked for huge sessions.
        max_file_size_bytes: 16 * 1024 * 1024,
        client_idle_timeout_secs: 5,
        ..Options::default()
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let codes = documented_codes();
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let generated: Vec<Case> = (0..cases)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();

    let answers: Vec<(Case, u16, Value)> = futures_util::stream::iter(generated)
        .map(|c| {
            let request = c.request(&app, &http);
            async move {
                let res = request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("no answer ({e}) to {c:?}"));
                let status = res.status().as_u16();
                (c, status, res.json().await.unwrap_or(Value::Null))
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut created = 0;
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for (case, status, answer) in &answers {
        if *status == 201 {
            created += 1;
            let id = answer["file"]["id"].as_str().unwrap();
            let path = app.emulator.file_path(id).expect("the emulator has the file");
            assert_eq!(sha1_of_path(&path), answer["upload"]["sha1"], "{case:?}");
            continue;
        }
        let code = answer["error"]["code"].as_str().unwrap_or("");
        assert!(
            (400..500).contains(status) && codes.iter().any(|c| c == code),
            "{status} {answer} for {case:?}"
        );
        *refused.entry(format!("{status} {code}")).or_default() += 1;
    }
    app.assert_no_open_session().await;
    eprintln!("fuzzed {cases} requests over HTTP: {created} created, refused: {refused:?}");
    assert!(
        created > 0 && created < cases,
        "the cases reach both sides: {created} of {cases}"
    );
}
