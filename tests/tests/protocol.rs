//! The varlink wire as a client sees it: introspection, parameter
//! handling, and errors that keep the connection usable.

use cfsd_tests::Daemon;
use cfsd_varlink::idl;
use serde_json::{Value, json};

fn error_name(reply: &Value) -> &str {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn served_descriptions_are_the_checked_in_files() {
    let daemon = Daemon::start(&[]);
    let mut conn = daemon.raw();
    let info = conn.call(json!({"method": "org.varlink.service.GetInfo"}));
    let interfaces = info["parameters"]["interfaces"].as_array().unwrap();
    assert_eq!(
        interfaces,
        &vec![
            json!("org.varlink.service"),
            json!("io.cfsd.Repository"),
            json!("io.cfsd.Oci")
        ]
    );
    for name in ["org.varlink.service", "io.cfsd.Repository", "io.cfsd.Oci"] {
        let reply = conn.call(json!({
            "method": "org.varlink.service.GetInterfaceDescription",
            "parameters": {"interface": name}
        }));
        let path = format!(
            "{}/../interfaces/{name}.varlink",
            env!("CARGO_MANIFEST_DIR")
        );
        let checked_in = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            reply["parameters"]["description"].as_str().unwrap(),
            checked_in
        );
    }
    let missing = conn.call(json!({
        "method": "org.varlink.service.GetInterfaceDescription",
        "parameters": {"interface": "org.example.Nope"}
    }));
    assert_eq!(
        error_name(&missing),
        "org.varlink.service.InterfaceNotFound"
    );
    assert_eq!(missing["parameters"]["interface"], "org.example.Nope");
}

#[test]
fn every_declared_method_is_served() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    for (interface, text) in idl::INTERFACES {
        for line in text.lines().filter_map(|l| l.strip_prefix("method ")) {
            let method = line.split('(').next().unwrap();
            let params = if method == "GetInterfaceDescription" {
                json!({"interface": "io.cfsd.Repository"})
            } else {
                json!({})
            };
            let reply =
                conn.call(json!({"method": format!("{interface}.{method}"), "parameters": params}));
            // Served means routed to its handler: a method that needs
            // parameters answers InvalidParameter, one that needs an image
            // ImageNotFound; never MethodNotFound or MethodNotImplemented.
            let error = reply["error"].as_str().unwrap_or_default();
            assert!(
                !error.ends_with(".MethodNotFound") && !error.ends_with(".MethodNotImplemented"),
                "{interface}.{method}: {reply}"
            );
            // An fd the method reads is an input the IDL cannot declare.
            let needs_fd = error.ends_with(".MissingFd");
            if takes_only_optional_parameters(line) || method == "GetInterfaceDescription" {
                assert!(
                    error.is_empty() || needs_fd,
                    "{interface}.{method}: {reply}"
                );
            }
        }
    }
}

/// Whether an IDL `method` line declares no required input: `Info()`,
/// `Gc(dryRun: ?bool)`; a list continued on later lines counts as required.
fn takes_only_optional_parameters(line: &str) -> bool {
    let Some((_, rest)) = line.split_once('(') else {
        return false;
    };
    let Some((inputs, _)) = rest.split_once(')') else {
        return false;
    };
    inputs.split(',').filter(|p| !p.trim().is_empty()).all(|p| {
        p.split_once(':')
            .is_some_and(|(_, ty)| ty.trim().starts_with('?'))
    })
}

#[test]
fn parameters_may_be_omitted_null_or_empty() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    for method in [
        "io.cfsd.Repository.Info",
        "io.cfsd.Repository.Fsck",
        "io.cfsd.Repository.Gc",
        "org.varlink.service.GetInfo",
    ] {
        for call in [
            json!({"method": method}),
            json!({"method": method, "parameters": null}),
            json!({"method": method, "parameters": {}}),
        ] {
            let reply = conn.call(call.clone());
            assert!(reply.get("error").is_none(), "{call}: {reply}");
            assert!(reply["parameters"].is_object(), "{call}: {reply}");
        }
    }
    // Gc without dryRun defaults to a real collection, reported as such.
    let gc = conn.call(json!({"method": "io.cfsd.Repository.Gc"}));
    assert_eq!(gc["parameters"]["dryRun"], false);
}

#[test]
fn unknown_methods_and_interfaces_are_named() {
    let daemon = Daemon::start(&[]);
    let mut conn = daemon.raw();
    let reply = conn.call(json!({"method": "io.cfsd.Repository.Frobnicate"}));
    assert_eq!(error_name(&reply), "org.varlink.service.MethodNotFound");
    assert_eq!(
        reply["parameters"]["method"],
        "io.cfsd.Repository.Frobnicate"
    );
    let reply = conn.call(json!({"method": "org.varlink.service.Frobnicate"}));
    assert_eq!(
        reply["parameters"]["method"],
        "org.varlink.service.Frobnicate"
    );
    let reply = conn.call(json!({"method": "org.example.Other.Call"}));
    assert_eq!(error_name(&reply), "org.varlink.service.InterfaceNotFound");
    assert_eq!(reply["parameters"]["interface"], "org.example.Other");
    let reply = conn.call(json!({"method": "NoDots"}));
    assert_eq!(error_name(&reply), "org.varlink.service.MethodNotFound");
}

#[test]
fn malformed_parameters_get_invalid_parameter_and_the_connection_lives() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    let cases = [
        (json!({"dryRun": "yes"}), "io.cfsd.Repository.Gc", "dryRun"),
        (
            json!({"dryRun": true, "force": 1}),
            "io.cfsd.Repository.Gc",
            "force",
        ),
        (
            json!({"algorithm": 256}),
            "io.cfsd.Repository.Init",
            "algorithm",
        ),
        (json!([1, 2]), "io.cfsd.Repository.Fsck", "parameters"),
        (json!("x"), "io.cfsd.Repository.Info", "parameters"),
        (json!({"extra": true}), "io.cfsd.Repository.Info", "extra"),
        (
            json!({}),
            "org.varlink.service.GetInterfaceDescription",
            "interface",
        ),
    ];
    for (params, method, culprit) in cases {
        let reply = conn.call(json!({"method": method, "parameters": params}));
        assert_eq!(
            error_name(&reply),
            "org.varlink.service.InvalidParameter",
            "{method} {params}"
        );
        assert_eq!(
            reply["parameters"]["parameter"], culprit,
            "{method} {params}"
        );
        // The same connection still answers.
        let info = conn.call(json!({"method": "io.cfsd.Repository.Info"}));
        assert_eq!(
            info["parameters"]["info"]["algorithm"],
            "fsverity-sha512-12"
        );
    }
}

#[test]
fn garbage_frames_get_an_error_and_the_connection_lives() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    let frames: [&[u8]; 5] = [
        b"this is not json",
        b"{\"method\": ",
        b"{\"parameters\": {}}",
        b"[1,2,3]",
        b"{\"method\": 42}",
    ];
    for frame in frames {
        conn.send_bytes(frame);
        let reply = conn.receive().expect("the daemon closed the connection");
        assert_eq!(
            error_name(&reply),
            "org.varlink.service.InvalidParameter",
            "{}",
            String::from_utf8_lossy(frame)
        );
        let info = conn.call(json!({"method": "io.cfsd.Repository.Info"}));
        assert!(info.get("error").is_none(), "{info}");
    }
}

#[test]
fn oneway_calls_get_no_reply() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    conn.send_bytes(
        json!({"method": "io.cfsd.Repository.Info", "oneway": true})
            .to_string()
            .as_bytes(),
    );
    let reply = conn.call(json!({"method": "org.varlink.service.GetInfo"}));
    // The first message back answers the second call.
    assert!(reply["parameters"]["interfaces"].is_array(), "{reply}");
}

#[test]
fn pipelined_calls_are_answered_in_order() {
    let daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    let calls = [
        json!({"method": "io.cfsd.Repository.Info"}),
        json!({"method": "io.cfsd.Repository.Nope"}),
        json!({"method": "org.varlink.service.GetInfo"}),
    ];
    for call in &calls {
        conn.send_bytes(call.to_string().as_bytes());
    }
    assert!(conn.receive().unwrap()["parameters"]["info"].is_object());
    assert_eq!(
        error_name(&conn.receive().unwrap()),
        "org.varlink.service.MethodNotFound"
    );
    assert!(conn.receive().unwrap()["parameters"]["interfaces"].is_array());
}
