#![allow(clippy::unwrap_used)]

use super::*;
use crate::snapshot::plugins::DEFAULT_EXTERNAL_TIMEOUT_MS;

fn external(target: Option<&str>, cluster: Option<&str>, timeout_ms: u32) -> External {
    External {
        target: target.map(str::to_owned),
        cluster: cluster.map(str::to_owned),
        timeout_ms,
        failure_mode: GuardFailureMode::Open,
    }
}

#[test]
fn settings_name_the_field_of_each_mistake() {
    let cases: &[(&str, External, Option<&str>)] = &[
        ("target", external(Some("guard.svc:50051"), None, 200), None),
        ("ipv6", external(Some("[::1]:9000"), None, 200), None),
        ("cluster", external(None, Some("my-guard"), 200), None),
        (
            "both",
            external(Some("a:1"), Some("b"), 200),
            Some("plugins[0].external"),
        ),
        (
            "neither",
            external(None, None, 200),
            Some("plugins[0].external"),
        ),
        (
            "no port",
            external(Some("guard.svc"), None, 200),
            Some("plugins[0].external.target"),
        ),
        (
            "port 0",
            external(Some("guard.svc:0"), None, 200),
            Some("plugins[0].external.target"),
        ),
        (
            "a scheme",
            external(Some("http://guard:80"), None, 200),
            Some("plugins[0].external.target"),
        ),
        (
            "a path",
            external(Some("guard/x:80"), None, 200),
            Some("plugins[0].external.target"),
        ),
        (
            "empty cluster",
            external(None, Some(""), 200),
            Some("plugins[0].external.cluster"),
        ),
        (
            "zero timeout",
            external(Some("a:1"), None, 0),
            Some("plugins[0].external.timeout_ms"),
        ),
        (
            "long timeout",
            external(Some("a:1"), None, 10_001),
            Some("plugins[0].external.timeout_ms"),
        ),
    ];
    for (name, e, want) in cases {
        let got = compile(e, "plugins[0]");
        match want {
            None => assert!(got.is_ok(), "{name}: {got:?}"),
            Some(field) => assert_eq!(got.unwrap_err().0, *field, "{name}"),
        }
    }
    let s = compile(&external(Some("guard.svc:50051"), None, 200), "p").unwrap();
    assert_eq!(s.cluster, "mcpgw-guard-guard.svc_50051");
    assert_eq!(DEFAULT_EXTERNAL_TIMEOUT_MS, 200);
}

#[test]
fn a_request_encodes_every_field() {
    let teams = vec!["red".to_owned(), "blue".to_owned()];
    let bytes = CheckRequest {
        plugin: "g",
        hook: Hook::ToolPreInvoke,
        method: "tools/call",
        server: Some("s"),
        name: Some("t"),
        principal: Some(("u", &teams)),
        params: b"{}",
        result: b"",
        request_id: Some("7"),
    }
    .encode();
    let want: Vec<u8> = [
        &[0x0a, 1, b'g'][..],
        &[0x10, 1],
        &[0x1a, 10],
        b"tools/call",
        &[0x22, 1, b's'],
        &[0x2a, 1, b't'],
        &[0x32, 14, 0x0a, 1, b'u', 0x12, 3],
        b"red",
        &[0x12, 4],
        b"blue",
        &[0x3a, 2],
        b"{}",
        &[0x4a, 1, b'7'],
    ]
    .concat();
    assert_eq!(bytes, want);
    // Post hooks carry the result; absent parts are left out.
    let bytes = CheckRequest {
        plugin: "g",
        hook: Hook::ResourcePostFetch,
        method: "resources/read",
        server: None,
        name: None,
        principal: None,
        params: b"",
        result: b"{\"a\":1}",
        request_id: None,
    }
    .encode();
    let want: Vec<u8> = [
        &[0x0a, 1, b'g'][..],
        &[0x10, 6],
        &[0x1a, 14],
        b"resources/read",
        &[0x42, 7],
        b"{\"a\":1}",
    ]
    .concat();
    assert_eq!(bytes, want);
}

/// A length-delimited field.
fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(n << 3) | 2];
    crate::limits::ratelimit::varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn header(name: &str, value: &str) -> Vec<u8> {
    field(
        3,
        &[field(1, name.as_bytes()), field(2, value.as_bytes())].concat(),
    )
}

#[test]
fn verdicts_decode() {
    assert_eq!(decode(&field(1, &[]), "x-route"), Ok(Verdict::Pass));
    // Unknown fields are skipped, here and inside the verdict.
    let pass = [&[0x78, 1][..], &field(9, b"zz"), &field(1, &[0x08, 1])].concat();
    assert_eq!(decode(&pass, "x-route"), Ok(Verdict::Pass));
    let mutate = field(
        2,
        &[
            field(1, br#"{"arguments":{"a":"b"}}"#),
            header("x-guard-verdict", "ok 1"),
        ]
        .concat(),
    );
    assert_eq!(
        decode(&mutate, "x-route"),
        Ok(Verdict::Mutate {
            params: Some(br#"{"arguments":{"a":"b"}}"#.to_vec()),
            result: None,
            headers: vec![("x-guard-verdict".into(), "ok 1".into())],
        })
    );
    // -32010 as an int32 on the wire: ten bytes of two's complement.
    let mut deny = field(1, b"secret\nstuff");
    deny.extend_from_slice(&[
        0x10, 0xf6, 0x85, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ]);
    assert_eq!(
        decode(&field(3, &deny), "x-route"),
        Ok(Verdict::Deny {
            reason: "secretstuff".into(),
            code: -32010
        })
    );
    // Codes outside MCP's server range become -32003.
    let deny = [field(1, b"no"), vec![0x10, 7]].concat();
    assert_eq!(
        decode(&field(3, &deny), "x-route"),
        Ok(Verdict::Deny {
            reason: "no".into(),
            code: -32003
        })
    );
    // A long reason is cut on a character boundary.
    let long = "é".repeat(200);
    let Ok(Verdict::Deny { reason, .. }) = decode(&field(3, &field(1, long.as_bytes())), "r")
    else {
        panic!("a deny")
    };
    assert_eq!(reason.len(), MAX_REASON_BYTES);
    // The last verdict on the wire wins (a oneof).
    let both = [field(3, &[]), field(1, &[])].concat();
    assert_eq!(decode(&both, "r"), Ok(Verdict::Pass));
}

#[test]
fn malformed_answers_are_refused() {
    let too_many: Vec<u8> = (0..=MAX_HEADERS)
        .flat_map(|i| header(&format!("x-h{i}"), "v"))
        .collect();
    let cases: &[(&str, Vec<u8>, Broken)] = &[
        ("empty", vec![], Broken::NoVerdict),
        ("unknown only", field(7, b"x"), Broken::NoVerdict),
        ("truncated key", vec![0x0a], Broken::Malformed),
        ("truncated length", vec![0x0a, 5, 1], Broken::Malformed),
        ("a group", vec![0x0b], Broken::Malformed),
        ("pass as a varint", vec![0x08, 1], Broken::Malformed),
        (
            "a truncated mutate",
            field(2, &[0x0a, 9, b'{']),
            Broken::Malformed,
        ),
        (
            "params not JSON",
            field(2, &field(1, b"{nope")),
            Broken::NotAnObject,
        ),
        (
            "params an array",
            field(2, &field(1, b"[1]")),
            Broken::NotAnObject,
        ),
        (
            "result a string",
            field(2, &field(2, b"\"x\"")),
            Broken::NotAnObject,
        ),
        (
            "a host header",
            field(2, &header("host", "evil")),
            Broken::Header,
        ),
        (
            "a pseudo-header",
            field(2, &header(":path", "/x")),
            Broken::Header,
        ),
        (
            "an mcp header",
            field(2, &header("mcp-session-id", "s")),
            Broken::Header,
        ),
        (
            "the route header",
            field(2, &header("x-route", "c")),
            Broken::Header,
        ),
        (
            "credentials",
            field(2, &header("authorization", "a")),
            Broken::Header,
        ),
        ("upper case", field(2, &header("X-Up", "v")), Broken::Header),
        (
            "CRLF in a value",
            field(2, &header("x-a", "v\r\nx: y")),
            Broken::Header,
        ),
        ("too many headers", field(2, &too_many), Broken::Header),
        (
            "deny code as bytes",
            field(3, &field(2, b"x")),
            Broken::Malformed,
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(decode(bytes, "x-route"), Err(*want), "{name}");
    }
}

#[test]
fn targets() {
    for ok in [
        "a:1",
        "guard.ns.svc.cluster.local:50051",
        "10.0.0.1:80",
        "[fe80::1]:9",
    ] {
        assert_eq!(check_target(ok), Ok(()), "{ok}");
    }
    for bad in [
        "", ":80", "a:", "a:65536", "a b:1", "-a:1", "a..b:1", "[zz]:1", "a:1/x",
    ] {
        assert!(check_target(bad).is_err(), "{bad}");
    }
}
