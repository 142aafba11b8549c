//! The golden-IDL test: the checked-in descriptions parse, and the
//! Rust wire types carry exactly the names they declare.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use zlink::idl::Interface;

use self::errors::{every_oci_error, every_repository_error, every_service_error};
use super::*;
use crate::{
    oci::{
        AppliedDelta, ComputeIdParams, ComputeIdReply, CreateDeltaParams, CreateDeltaReply,
        DeltaDiscovery, DeltaLayer, DeltaMethod, DumpParams, EmptyReply, ExportImageReply,
        ExportLayerParams, ExportParams, ExportReply, IdmapParams, IdmapReply, Image, ImageParams,
        InspectReply, KernelArgumentReply, LayerFormat, LayerProgress, ListImagesReply,
        MakeBootableReply, MountFuseParams, MountFuseReply, MountParams, PullParams, PullReply,
        PullResult, PushCompression, PushDeltaParams, PushDeltaReply, PushParams, PushReply,
        RemoveReply, TagParams, UntagParams,
    },
    repository::*,
    service::*,
};

mod errors;

fn parse(text: &'static str) -> Interface<'static> {
    Interface::try_from(text).expect("the checked-in IDL parses")
}

fn keys(value: &impl Serialize) -> BTreeSet<String> {
    match serde_json::to_value(value).unwrap() {
        Value::Object(map) => map.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

fn method_fields(idl: &Interface<'_>, method: &str, output: bool) -> BTreeSet<String> {
    let m = idl
        .methods()
        .find(|m| *m.name() == *method)
        .unwrap_or_else(|| panic!("{method} not in the IDL"));
    let fields: Vec<_> = if output {
        m.outputs().collect()
    } else {
        m.inputs().collect()
    };
    fields.iter().map(|f| f.name().to_string()).collect()
}

fn type_fields(idl: &Interface<'_>, name: &str) -> BTreeSet<String> {
    let ty = idl
        .custom_types()
        .find(|t| *t.name() == *name)
        .and_then(|t| t.as_object())
        .unwrap_or_else(|| panic!("type {name} not in the IDL"));
    ty.fields().map(|f| f.name().to_string()).collect()
}

/// The errors' wire names and parameter names equal the IDL's.
fn assert_errors(idl: &Interface<'_>, errors: &[impl Serialize]) {
    let interface = idl.name().to_string();
    let mut declared: BTreeSet<String> = idl.errors().map(|e| e.name().to_string()).collect();
    for error in errors {
        let wire = serde_json::to_value(error).unwrap();
        let name = wire["error"].as_str().unwrap();
        let short = name
            .strip_prefix(&format!("{interface}."))
            .unwrap_or_else(|| panic!("{name} is not in {interface}"));
        assert!(declared.remove(short), "{name} is not declared in the IDL");
        let params = wire
            .get("parameters")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let idl_error = idl.errors().find(|e| *e.name() == *short).unwrap();
        let declared_fields: BTreeSet<String> =
            idl_error.fields().map(|f| f.name().to_string()).collect();
        assert_eq!(keys(&params), declared_fields, "parameters of {name}");
    }
    assert!(
        declared.is_empty(),
        "declared but not in the Rust enum: {declared:?}"
    );
}

#[test]
fn repository_interface_matches_wire_types() {
    let idl = parse(REPOSITORY);
    assert_eq!(idl.name().to_string(), REPOSITORY_INTERFACE);
    let declared: BTreeSet<_> = idl.methods().map(|m| m.name().to_string()).collect();
    let served: BTreeSet<_> = crate::repository::METHODS
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(declared, served);

    let info = RepositoryInfo {
        path: "/r".into(),
        algorithm: "fsverity-sha512-12".into(),
        verity: Verity {
            enforced: false,
            reason: Some("no verity".into()),
        },
        objects: Usage::default(),
        streams: Usage::default(),
        images: Usage::default(),
        gc_holders: vec!["h".into()],
    };
    assert_eq!(keys(&info), type_fields(&idl, "RepositoryInfo"));
    assert_eq!(keys(&info.verity), type_fields(&idl, "Verity"));
    assert_eq!(keys(&Usage::default()), type_fields(&idl, "Usage"));
    let problem = Problem {
        kind: "k".into(),
        detail: "d".into(),
    };
    assert_eq!(keys(&problem), type_fields(&idl, "Problem"));

    assert_eq!(
        keys(&InfoReply { info: info.clone() }),
        method_fields(&idl, "Info", true)
    );
    assert!(method_fields(&idl, "Info", false).is_empty());
    let init = InitParams {
        algorithm: Some("sha512".into()),
    };
    assert_eq!(keys(&init), method_fields(&idl, "Init", false));
    let init_reply = InitReply {
        info,
        created: true,
    };
    assert_eq!(keys(&init_reply), method_fields(&idl, "Init", true));
    let fsck = FsckParams {
        metadata_only: Some(true),
    };
    assert_eq!(keys(&fsck), method_fields(&idl, "Fsck", false));
    assert_eq!(
        keys(&FsckReply::default()),
        method_fields(&idl, "Fsck", true)
    );
    let gc = GcParams {
        dry_run: Some(true),
    };
    assert_eq!(keys(&gc), method_fields(&idl, "Gc", false));
    assert_eq!(keys(&GcReply::default()), method_fields(&idl, "Gc", true));
    let hold = HoldParams { reason: "r".into() };
    assert_eq!(keys(&hold), method_fields(&idl, "Hold", false));
    assert_eq!(
        keys(&HoldReply::default()),
        method_fields(&idl, "Hold", true)
    );

    plain_image_methods_match_wire_types(&idl);
    assert!(method_fields(&idl, "IndexContent", false).is_empty());
    assert_eq!(
        keys(&crate::repository::IndexContentReply::default()),
        method_fields(&idl, "IndexContent", true)
    );
    assert_errors(&idl, &every_repository_error());
}

/// The plain-image methods of `io.cfsd.Repository`.
fn plain_image_methods_match_wire_types(idl: &Interface<'_>) {
    let create = CreateImageParams {
        name: Some("n".into()),
        no_propagate_usr: Some(true),
        keep_user_xattrs: Some(true),
    };
    assert_eq!(keys(&create), method_fields(idl, "CreateImage", false));
    let id = ImageIdReply::default();
    assert_eq!(keys(&id), method_fields(idl, "CreateImage", true));
    let compute = ComputeImageIdParams {
        no_propagate_usr: Some(true),
        keep_user_xattrs: Some(true),
    };
    assert_eq!(keys(&compute), method_fields(idl, "ComputeImageId", false));
    assert_eq!(keys(&id), method_fields(idl, "ComputeImageId", true));
    assert!(method_fields(idl, "ListNamedImages", false).is_empty());
    assert_eq!(
        keys(&ListNamedImagesReply::default()),
        method_fields(idl, "ListNamedImages", true)
    );
    let named = NamedImage {
        name: "n".into(),
        image_id: "i".into(),
    };
    assert_eq!(keys(&named), type_fields(idl, "NamedImage"));
    let image = PlainImageParams { image: "i".into() };
    assert_eq!(keys(&image), method_fields(idl, "ImageObjects", false));
    assert_eq!(
        keys(&ImageObjectsReply::default()),
        method_fields(idl, "ImageObjects", true)
    );
    assert_eq!(keys(&image), method_fields(idl, "MountImage", false));
    assert!(method_fields(idl, "MountImage", true).is_empty());
}

#[test]
fn oci_interface_matches_wire_types() {
    let idl = parse(OCI);
    assert_eq!(idl.name().to_string(), OCI_INTERFACE);
    let declared: BTreeSet<_> = idl.methods().map(|m| m.name().to_string()).collect();
    let served: BTreeSet<_> = crate::oci::METHODS.iter().map(|m| m.to_string()).collect();
    assert_eq!(declared, served);

    let progress = LayerProgress {
        layer: "sha256:ab".into(),
        stage: "importing".into(),
        done: 1,
        total: 2,
    };
    assert_eq!(keys(&progress), type_fields(&idl, "LayerProgress"));
    let delta = AppliedDelta {
        source_manifest: Some("sha256:ab".into()),
        ..AppliedDelta::default()
    };
    assert_eq!(keys(&delta), type_fields(&idl, "AppliedDelta"));
    let discovery = DeltaDiscovery {
        manifest: Some("sha256:cd".into()),
        ..DeltaDiscovery::default()
    };
    assert_eq!(keys(&discovery), type_fields(&idl, "DeltaDiscovery"));
    let partial = crate::oci::PartialPull::default();
    assert_eq!(keys(&partial), type_fields(&idl, "PartialPull"));
    let result = PullResult {
        delta: Some(delta),
        delta_discovery: Some(discovery),
        stage: Some("ab".into()),
        partial_pull: Some(partial),
        ..PullResult::default()
    };
    assert_eq!(keys(&result), type_fields(&idl, "PullResult"));
    let image = Image {
        created: Some("2024-01-01T00:00:00Z".into()),
        image_id: Some("ab".into()),
        ..Image::default()
    };
    assert_eq!(keys(&image), type_fields(&idl, "Image"));

    let pull = PullParams {
        transport: "oci".into(),
        reference: Some("latest".into()),
        tag: Some("t".into()),
        platform: Some("linux/amd64".into()),
        jobs: Some(2),
        tls_verify: Some(false),
        no_delta: Some(true),
        digest: Some("sha256:x".to_owned()),
        stage: Some(true),
        source_repo: Some(true),
        no_partial: Some(true),
    };
    assert_eq!(keys(&pull), method_fields(&idl, "Pull", false));
    let copy = crate::oci::CopyParams {
        image: "x".into(),
        tag: Some("t".into()),
        jobs: Some(1),
    };
    assert_eq!(keys(&copy), method_fields(&idl, "Copy", false));
    let pull_reply = PullReply {
        progress: Some(progress),
        result: Some(PullResult::default()),
    };
    assert_eq!(keys(&pull_reply), method_fields(&idl, "Pull", true));

    assert!(method_fields(&idl, "ListImages", false).is_empty());
    assert_eq!(
        keys(&ListImagesReply::default()),
        method_fields(&idl, "ListImages", true)
    );

    let image_params = keys(&ImageParams::default());
    for method in ["Inspect", "Remove", "MakeBootable", "KernelArgument"] {
        assert_eq!(image_params, method_fields(&idl, method, false), "{method}");
    }
    let compute_id = ComputeIdParams {
        image: "a".into(),
        bootable: Some(true),
    };
    assert_eq!(keys(&compute_id), method_fields(&idl, "ComputeId", false));
    assert_eq!(
        keys(&MakeBootableReply::default()),
        method_fields(&idl, "MakeBootable", true)
    );
    assert_eq!(
        keys(&KernelArgumentReply::default()),
        method_fields(&idl, "KernelArgument", true)
    );
    let mount = MountParams {
        image: "a".into(),
        allow_setuid: Some(true),
        allow_devices: Some(true),
        bootable: Some(true),
        uidmap: Some(vec![]),
        gidmap: Some(vec![]),
    };
    assert_eq!(keys(&mount), method_fields(&idl, "Mount", false));
    assert_eq!(
        keys(&IdmapParams::default()),
        method_fields(&idl, "Idmap", false)
    );
    assert_eq!(
        keys(&IdmapReply::default()),
        method_fields(&idl, "Idmap", true)
    );
    assert_eq!(
        keys(&MountFuseParams::default()),
        method_fields(&idl, "MountFuse", false)
    );
    assert_eq!(
        keys(&MountFuseReply::default()),
        method_fields(&idl, "MountFuse", true)
    );
    let inspect = InspectReply {
        image_id: Some("ab".into()),
        bootable_image_id: Some("cd".into()),
        ..InspectReply::default()
    };
    assert_eq!(keys(&inspect), method_fields(&idl, "Inspect", true));
    assert_eq!(
        keys(&RemoveReply::default()),
        method_fields(&idl, "Remove", true)
    );
    assert_eq!(
        keys(&ComputeIdReply::default()),
        method_fields(&idl, "ComputeId", true)
    );

    assert_eq!(
        keys(&TagParams::default()),
        method_fields(&idl, "Tag", false)
    );
    assert_eq!(
        keys(&UntagParams::default()),
        method_fields(&idl, "Untag", false)
    );
    for method in ["Tag", "Untag", "Mount"] {
        assert_eq!(
            keys(&EmptyReply::default()),
            method_fields(&idl, method, true),
            "{method}"
        );
    }

    assert_eq!(
        keys(&DeltaLayer::default()),
        type_fields(&idl, "DeltaLayer")
    );
    let create = CreateDeltaParams {
        source: "a".into(),
        target: "b".into(),
        jobs: Some(2),
        method: Some(DeltaMethod::Bsdiff),
        reference: Some("latest".into()),
    };
    assert_eq!(keys(&create), method_fields(&idl, "CreateDelta", false));
    assert_eq!(
        keys(&CreateDeltaReply::default()),
        method_fields(&idl, "CreateDelta", true)
    );

    let push = PushParams {
        image: "a".into(),
        reference: "h/n:t".into(),
        compression: Some(PushCompression::Zstd),
        tls_verify: Some(true),
    };
    assert_eq!(keys(&push), method_fields(&idl, "Push", false));
    assert_eq!(
        keys(&PushReply::default()),
        method_fields(&idl, "Push", true)
    );

    let push_delta = PushDeltaParams {
        source: "a".into(),
        target: "b".into(),
        reference: "h/n:t".into(),
        jobs: Some(1),
        method: Some(DeltaMethod::Zstd),
        tls_verify: Some(false),
    };
    assert_eq!(keys(&push_delta), method_fields(&idl, "PushDelta", false));
    assert_eq!(
        keys(&PushDeltaReply::default()),
        method_fields(&idl, "PushDelta", true)
    );
    let dump = DumpParams { image: "i".into() };
    assert_eq!(keys(&dump), method_fields(&idl, "Dump", false));
    let layer = ExportLayerParams {
        diff_id: "sha256:ab".into(),
        format: Some(LayerFormat::Dumpfile),
    };
    assert_eq!(keys(&layer), method_fields(&idl, "ExportLayer", false));
    let export = ExportParams {
        image: "i".into(),
        compression: Some(PushCompression::Zstd),
        reference: Some("r".into()),
    };
    assert_eq!(keys(&export), method_fields(&idl, "Export", false));
    assert_eq!(
        keys(&ExportImageReply::default()),
        method_fields(&idl, "Export", true)
    );
    let written = ExportReply { bytes: Some(1) };
    for method in ["Dump", "ExportLayer"] {
        assert_eq!(
            keys(&written),
            method_fields(&idl, method, true),
            "{method}"
        );
    }

    stage_methods_match_wire_types(&idl);
    assert_errors(&idl, &every_oci_error());
}

fn stage_methods_match_wire_types(idl: &Interface<'_>) {
    use crate::oci::{CommitParams, CommitReply, ListStagesReply, Stage, StageParams};
    let stage = Stage {
        image_id: Some("ab".into()),
        ..Stage::default()
    };
    assert_eq!(keys(&stage), type_fields(idl, "Stage"));
    assert!(method_fields(idl, "ListStages", false).is_empty());
    let listed = ListStagesReply::default();
    assert_eq!(keys(&listed), method_fields(idl, "ListStages", true));
    let commit = CommitParams::default();
    assert_eq!(keys(&commit), method_fields(idl, "Commit", false));
    let reply = CommitReply::default();
    assert_eq!(keys(&reply), method_fields(idl, "Commit", true));
    let abort = StageParams::default();
    assert_eq!(keys(&abort), method_fields(idl, "Abort", false));
    let empty = EmptyReply::default();
    assert_eq!(keys(&empty), method_fields(idl, "Abort", true));
}

#[test]
fn service_interface_matches_wire_types() {
    let idl = parse(SERVICE);
    assert_eq!(idl.name().to_string(), SERVICE_INTERFACE);
    let declared: BTreeSet<_> = idl.methods().map(|m| m.name().to_string()).collect();
    let served: BTreeSet<_> = crate::service::METHODS
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(declared, served);
    let info = ServiceInfo {
        vendor: String::new(),
        product: String::new(),
        version: String::new(),
        url: String::new(),
        interfaces: vec![],
    };
    assert_eq!(keys(&info), method_fields(&idl, "GetInfo", true));
    let params = DescriptionParams {
        interface: String::new(),
    };
    assert_eq!(
        keys(&params),
        method_fields(&idl, "GetInterfaceDescription", false)
    );
    let reply = DescriptionReply {
        description: String::new(),
    };
    assert_eq!(
        keys(&reply),
        method_fields(&idl, "GetInterfaceDescription", true)
    );
    assert_errors(&idl, &every_service_error());
}

/// Each name is paired with its own description (the golden test in
/// `tests/` compares the served texts with the files over the wire).
#[test]
fn description_finds_each_served_interface_and_no_other() {
    for (name, text) in INTERFACES {
        assert_eq!(
            parse(text).name(),
            *name,
            "{name} is paired with another file"
        );
        assert_eq!(description(name), Some(*text));
    }
    assert_eq!(description("org.example.Nope"), None);
}
