//! The deployment files stay consistent: the k8s/ manifests with each other (kustomization, Secret and
//! ConfigMap references, selectors, probe and Service ports, the KEDA scaler), with the Dockerfile (entrypoint,
//! user, exposed ports, COPY sources, CPU flags), and with the real binary (every subcommand, `--flag` and
//! `COMPANION_*` variable the manifests use must appear in `companion <subcommand> --help`).
//!
//! Each test collects every problem it finds and fails once, listing them all with the file and object.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The RabbitMQ work queue the workers consume and KEDA watches.
const QUEUE: &str = "companion.jobs";
/// The HTTP endpoints of the metrics listener (serve and worker).
const HTTP_ENDPOINTS: &[&str] = &["/metrics", "/healthz", "/readyz"];
/// `COMPANION_*` variables that the binary reads without a flag (so `--help` does not list them).
const NON_FLAG_ENV: &[&str] = &["COMPANION_LOG"];
/// Flags whose value is a file the pod must mount.
const FILE_FLAGS: &[(&str, &str)] = &[
    ("--tokens", "COMPANION_TOKENS"),
    ("--tls-cert", "COMPANION_TLS_CERT"),
    ("--tls-key", "COMPANION_TLS_KEY"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// One YAML document of k8s/.
struct Doc {
    file: String,
    kind: String,
    name: String,
    v: Value,
}

impl Doc {
    fn id(&self) -> String {
        format!("k8s/{}: {} {}", self.file, self.kind, self.name)
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn list<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn string_map(v: &Value, ptr: &str) -> BTreeMap<String, String> {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("k8s"))
        .expect("k8s/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

fn load() -> Vec<Doc> {
    let mut docs = Vec::new();
    for file in yaml_files() {
        let text = std::fs::read_to_string(repo().join("k8s").join(&file)).unwrap();
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let yaml = serde_yaml_ng::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("k8s/{file}: document {}: invalid YAML: {e}", i + 1));
            if yaml.is_null() {
                continue;
            }
            let v = serde_json::to_value(&yaml).unwrap_or_else(|e| {
                panic!(
                    "k8s/{file}: document {}: not a JSON-like object: {e}",
                    i + 1
                )
            });
            let kind = str_at(&v, "/kind").unwrap_or_else(|| {
                panic!("k8s/{file}: document {} has no kind", i + 1);
            });
            let name = if kind == "Kustomization" {
                "-"
            } else {
                str_at(&v, "/metadata/name").unwrap_or_else(|| {
                    panic!(
                        "k8s/{file}: document {} ({kind}) has no metadata.name",
                        i + 1
                    )
                })
            };
            docs.push(Doc {
                file: file.clone(),
                kind: kind.to_string(),
                name: name.to_string(),
                v: v.clone(),
            });
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.kind == kind && d.name == name)
}

/// The keys of a Secret or ConfigMap.
fn keys(doc: &Doc) -> BTreeSet<String> {
    ["/data", "/stringData", "/binaryData"]
        .iter()
        .flat_map(|p| string_map(&doc.v, p).into_keys())
        .collect()
}

fn kind_of_ref(r: &str) -> &'static str {
    if r.starts_with("secret") {
        "Secret"
    } else {
        "ConfigMap"
    }
}

/// Checks that `kind`/`name` exists (with `key`, if given); `optional` references may be missing.
fn check_ref(
    docs: &[Doc],
    errs: &mut Vec<String>,
    from: &str,
    kind: &str,
    name: Option<&str>,
    key: Option<&str>,
    optional: bool,
) {
    let Some(name) = name else {
        errs.push(format!("{from}: a {kind} reference without a name"));
        return;
    };
    match find(docs, kind, name) {
        None if optional => {}
        None => errs.push(format!(
            "{from}: references {kind} {name}, which no file in k8s/ defines"
        )),
        Some(target) => {
            if let Some(key) = key
                && !keys(target).contains(key)
            {
                errs.push(format!(
                    "{from}: references key {key:?} of {kind} {name}, which {} does not have (keys: {:?})",
                    target.id(),
                    keys(target)
                ));
            }
        }
    }
}

/// Workloads: documents with a pod template.
fn workloads(docs: &[Doc]) -> impl Iterator<Item = &Doc> {
    docs.iter()
        .filter(|d| d.v.pointer("/spec/template/spec").is_some())
}

fn pod_labels(w: &Doc) -> BTreeMap<String, String> {
    string_map(&w.v, "/spec/template/metadata/labels")
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn containers(w: &Doc) -> impl Iterator<Item = &Value> {
    list(&w.v, "/spec/template/spec/initContainers")
        .iter()
        .chain(list(&w.v, "/spec/template/spec/containers"))
}

fn container_id(w: &Doc, c: &Value) -> String {
    format!("{} container {}", w.id(), str_at(c, "/name").unwrap_or("?"))
}

/// Whether an IntOrString port (a number or a port name) is declared by the container.
fn has_port(c: &Value, port: &Value) -> bool {
    list(c, "/ports").iter().any(|p| match port {
        Value::Number(n) => p.get("containerPort") == Some(&Value::Number(n.clone())),
        Value::String(s) => str_at(p, "/name") == Some(s),
        _ => false,
    })
}

fn container_ports(c: &Value) -> BTreeSet<u64> {
    list(c, "/ports")
        .iter()
        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .collect()
}

/// The container's command line after `companion`.
fn args(c: &Value) -> Vec<String> {
    list(c, "/args")
        .iter()
        .map(|a| a.as_str().map_or(a.to_string(), str::to_string))
        .collect()
}

/// Leading subcommand words (`serve`, or `models fetch`).
fn subcommand(args: &[String]) -> Vec<String> {
    let words: Vec<String> = args
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let n = if words.first().map(String::as_str) == Some("models") {
        2
    } else {
        1
    };
    words.into_iter().take(n).collect()
}

/// `--flag` names used in args (`--flag value` or `--flag=value`).
fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// The environment a container gets: name → value (`None` when it comes from a Secret or ConfigMap key that
/// is missing; those are reported by the reference checks).
fn env_of(docs: &[Doc], c: &Value) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for from in list(c, "/envFrom") {
        let prefix = str_at(from, "/prefix").unwrap_or("");
        for r in ["configMapRef", "secretRef"] {
            let Some(name) = from.get(r).and_then(|r| str_at(r, "/name")) else {
                continue;
            };
            if let Some(doc) = find(docs, kind_of_ref(r), name) {
                for (k, v) in string_map(&doc.v, "/data")
                    .into_iter()
                    .chain(string_map(&doc.v, "/stringData"))
                {
                    env.insert(format!("{prefix}{k}"), Some(v));
                }
            }
        }
    }
    for e in list(c, "/env") {
        let Some(name) = str_at(e, "/name") else {
            continue;
        };
        let value = if let Some(v) = str_at(e, "/value") {
            Some(v.to_string())
        } else {
            ["configMapKeyRef", "secretKeyRef"].iter().find_map(|r| {
                let r_v = e.pointer(&format!("/valueFrom/{r}"))?;
                let doc = find(docs, kind_of_ref(r), str_at(r_v, "/name")?)?;
                let key = str_at(r_v, "/key")?;
                string_map(&doc.v, "/data")
                    .remove(key)
                    .or_else(|| string_map(&doc.v, "/stringData").remove(key))
            })
        };
        env.insert(name.to_string(), value);
    }
    env
}

/// A setting given as `--flag` in args or as its environment variable.
fn setting(docs: &[Doc], c: &Value, flag: &str, var: &str) -> Option<String> {
    flag_value(&args(c), flag).or_else(|| env_of(docs, c).remove(var).flatten())
}

fn port_of(addr: &str) -> Option<u64> {
    addr.rsplit(':').next()?.parse().ok()
}

/// The Dockerfile as instructions (continuation lines joined, comments dropped): (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile at the repo root");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((instr.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// The final stage's numeric `USER` uid.
fn dockerfile_uid(instrs: &[(String, String)]) -> Option<u64> {
    let last_from = instrs.iter().rposition(|(i, _)| i == "FROM")?;
    // `FROM base AS runtime` inherits USER from the `base` stage: look back through the stages it builds on.
    let mut stage_end = instrs.len();
    let mut stage_start = last_from;
    loop {
        if let Some((_, user)) = instrs[stage_start..stage_end]
            .iter()
            .rev()
            .find(|(i, _)| i == "USER")
        {
            return user.split(':').next()?.parse().ok();
        }
        let parent = instrs[stage_start].1.split_whitespace().next()?.to_string();
        let parent_at = instrs[..stage_start].iter().rposition(|(i, rest)| {
            i == "FROM"
                && rest
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0].eq_ignore_ascii_case("as") && w[1] == parent)
        })?;
        stage_start = parent_at;
        stage_end = instrs[parent_at + 1..]
            .iter()
            .position(|(i, _)| i == "FROM")
            .map_or(instrs.len(), |n| parent_at + 1 + n);
    }
}

#[test]
fn kustomization_lists_exactly_the_manifests() {
    let docs = load();
    let kustomizations: Vec<&Doc> = docs.iter().filter(|d| d.kind == "Kustomization").collect();
    assert_eq!(
        kustomizations.len(),
        1,
        "k8s/ must hold exactly one Kustomization (kustomization.yaml)"
    );
    let k = kustomizations[0];
    let listed: BTreeSet<String> = list(&k.v, "/resources")
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    let present: BTreeSet<String> = yaml_files().into_iter().filter(|f| *f != k.file).collect();
    assert_eq!(
        listed,
        present,
        "k8s/{}: resources must list exactly the other YAML files of k8s/ \
         (listed but missing: {:?}; present but not listed: {:?})",
        k.file,
        listed.difference(&present).collect::<Vec<_>>(),
        present.difference(&listed).collect::<Vec<_>>()
    );
}

#[test]
fn manifests_reference_what_exists() {
    let docs = load();
    let mut errs = Vec::new();

    let mut seen = BTreeSet::new();
    for d in docs.iter().filter(|d| d.kind != "Kustomization") {
        if !seen.insert((d.kind.clone(), d.name.clone())) {
            errs.push(format!("{}: defined twice", d.id()));
        }
        if d.v.pointer("/metadata/namespace").is_some() {
            errs.push(format!(
                "{}: sets metadata.namespace; the manifests must stay namespace-agnostic",
                d.id()
            ));
        }
        if d.kind == "Secret" {
            for (k, v) in string_map(&d.v, "/stringData") {
                if !v.contains("CHANGE-ME") {
                    errs.push(format!(
                        "{}: key {k} must be an obvious placeholder (contain CHANGE-ME), not a real value",
                        d.id()
                    ));
                }
            }
            if d.v.pointer("/data").is_some() {
                errs.push(format!(
                    "{}: use stringData with placeholders, not data",
                    d.id()
                ));
            }
        }
    }

    let image_names: BTreeSet<String> = docs
        .iter()
        .filter(|d| d.kind == "Kustomization")
        .flat_map(|k| list(&k.v, "/images"))
        .filter_map(|i| str_at(i, "/name").map(str::to_string))
        .collect();

    let docker = dockerfile();
    let uid = dockerfile_uid(&docker);
    let exposed: BTreeSet<u64> = docker
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
        .collect();

    for w in workloads(&docs) {
        let wid = w.id();
        let spec = w.v.pointer("/spec/template/spec").unwrap();

        // Selector and template labels.
        if w.kind == "Deployment" || w.kind == "StatefulSet" || w.kind == "DaemonSet" {
            let selector = string_map(&w.v, "/spec/selector/matchLabels");
            if !selects(&selector, &pod_labels(w)) {
                errs.push(format!(
                    "{wid}: spec.selector.matchLabels {selector:?} does not match the pod template labels {:?}",
                    pod_labels(w)
                ));
            }
        }

        // Pod security matches the image's user.
        let run_as = spec
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_u64);
        if run_as.is_none() || run_as != uid {
            errs.push(format!(
                "{wid}: securityContext.runAsUser is {run_as:?}, the Dockerfile's final USER is {uid:?}"
            ));
        }

        // Volumes: Secrets and ConfigMaps exist with the projected keys.
        let volumes: BTreeMap<String, &Value> = list(spec, "/volumes")
            .iter()
            .filter_map(|v| Some((str_at(v, "/name")?.to_string(), v)))
            .collect();
        for (vname, v) in &volumes {
            for (src, kind, name_field) in [
                ("secret", "Secret", "secretName"),
                ("configMap", "ConfigMap", "name"),
            ] {
                let Some(s) = v.get(src) else { continue };
                let name = str_at(s, &format!("/{name_field}"));
                let optional = s.get("optional") == Some(&Value::Bool(true));
                let from = format!("{wid} volume {vname}");
                check_ref(&docs, &mut errs, &from, kind, name, None, optional);
                for item in list(s, "/items") {
                    check_ref(
                        &docs,
                        &mut errs,
                        &from,
                        kind,
                        name,
                        str_at(item, "/key"),
                        optional,
                    );
                }
            }
        }

        // Prometheus scrape port.
        if let Some(port) = str_at(
            &w.v,
            "/spec/template/metadata/annotations/prometheus.io~1port",
        ) {
            let port: u64 = port.parse().unwrap_or(0);
            if !containers(w).any(|c| container_ports(c).contains(&port)) {
                errs.push(format!(
                    "{wid}: annotation prometheus.io/port {port} is not a containerPort of the pod"
                ));
            }
        }

        for c in containers(w) {
            let cid = container_id(w, c);
            let args = args(c);
            let sub = subcommand(&args);
            let sub_str = sub.join(" ");

            // Image: one the kustomization can retag; entrypoint: the image's `companion`.
            let image = str_at(c, "/image").unwrap_or("");
            let repo_part = image
                .rsplit_once(':')
                .map_or(image, |(r, tag)| if tag.contains('/') { image } else { r });
            if !image_names.contains(repo_part) {
                errs.push(format!(
                    "{cid}: image {image:?} is not one of kustomization.yaml images {image_names:?}"
                ));
            }
            if let Some(cmd) = c.get("command")
                && cmd != &serde_json::json!(["companion"])
            {
                errs.push(format!(
                    "{cid}: sets command {cmd}; leave it out (the image's ENTRYPOINT is companion) and use args"
                ));
            }
            if sub.is_empty() {
                errs.push(format!(
                    "{cid}: args must start with a companion subcommand"
                ));
            }

            // Environment references.
            for from in list(c, "/envFrom") {
                for r in ["configMapRef", "secretRef"] {
                    if let Some(r_v) = from.get(r) {
                        let optional = r_v.get("optional") == Some(&Value::Bool(true));
                        let from = format!("{cid} envFrom");
                        check_ref(
                            &docs,
                            &mut errs,
                            &from,
                            kind_of_ref(r),
                            str_at(r_v, "/name"),
                            None,
                            optional,
                        );
                    }
                }
            }
            for e in list(c, "/env") {
                for r in ["configMapKeyRef", "secretKeyRef"] {
                    if let Some(r_v) = e.pointer(&format!("/valueFrom/{r}")) {
                        let optional = r_v.get("optional") == Some(&Value::Bool(true));
                        let from = format!("{cid} env {}", str_at(e, "/name").unwrap_or("?"));
                        check_ref(
                            &docs,
                            &mut errs,
                            &from,
                            kind_of_ref(r),
                            str_at(r_v, "/name"),
                            str_at(r_v, "/key"),
                            optional,
                        );
                    }
                }
            }

            // Mounts.
            for m in list(c, "/volumeMounts") {
                let name = str_at(m, "/name").unwrap_or("?");
                if !volumes.contains_key(name) {
                    errs.push(format!(
                        "{cid}: mounts volume {name}, which the pod does not declare"
                    ));
                }
            }

            // Files given by flag: mounted from a Secret/ConfigMap item that exists.
            for (flag, var) in FILE_FLAGS {
                let Some(path) = setting(&docs, c, flag, var) else {
                    continue;
                };
                let mount = list(c, "/volumeMounts").iter().find_map(|m| {
                    let dir = str_at(m, "/mountPath")?;
                    let rel = path.strip_prefix(dir)?.strip_prefix('/')?;
                    Some((str_at(m, "/name")?, rel.to_string()))
                });
                let Some((vname, rel)) = mount else {
                    errs.push(format!(
                        "{cid}: {flag} {path} is not under any of the container's volumeMounts"
                    ));
                    continue;
                };
                let Some(v) = volumes.get(vname) else {
                    continue;
                };
                for (src, kind, name_field) in [
                    ("secret", "Secret", "secretName"),
                    ("configMap", "ConfigMap", "name"),
                ] {
                    let Some(s) = v.get(src) else { continue };
                    let items = list(s, "/items");
                    let found = if items.is_empty() {
                        str_at(s, &format!("/{name_field}"))
                            .and_then(|n| find(&docs, kind, n))
                            .is_some_and(|d| keys(d).contains(&rel))
                    } else {
                        items
                            .iter()
                            .any(|i| str_at(i, "/path") == Some(rel.as_str()))
                    };
                    if !found {
                        errs.push(format!(
                            "{cid}: {flag} {path}: volume {vname} ({kind}) provides no file {rel}"
                        ));
                    }
                }
            }

            // Listeners: what the process binds is what the container declares.
            let mut listens = BTreeMap::new();
            if sub_str == "serve" {
                let grpc = setting(&docs, c, "--listen", "COMPANION_LISTEN")
                    .unwrap_or_else(|| "0.0.0.0:50051".to_string());
                listens.insert("grpc", grpc);
            }
            if sub_str == "serve" || sub_str == "worker" {
                match setting(&docs, c, "--metrics-listen", "COMPANION_METRICS_LISTEN") {
                    Some(addr) => {
                        listens.insert("metrics", addr);
                    }
                    None => errs.push(format!(
                        "{cid}: `companion {sub_str}` without --metrics-listen/COMPANION_METRICS_LISTEN: \
                         no /metrics, /healthz or /readyz to probe and scrape"
                    )),
                }
            }
            let mut bound = BTreeSet::new();
            for (what, addr) in &listens {
                match port_of(addr) {
                    Some(p) => {
                        bound.insert(p);
                        if !container_ports(c).contains(&p) {
                            errs.push(format!(
                                "{cid}: listens for {what} on {addr}, but declares no containerPort {p}"
                            ));
                        }
                        if !exposed.contains(&p) {
                            errs.push(format!(
                                "{cid}: port {p} ({what}) is not EXPOSEd in the Dockerfile"
                            ));
                        }
                    }
                    None => errs.push(format!("{cid}: {what} address {addr:?} has no port")),
                }
            }
            for p in container_ports(c) {
                if !bound.contains(&p) {
                    errs.push(format!(
                        "{cid}: declares containerPort {p}, but `companion {sub_str}` listens on {bound:?}"
                    ));
                }
            }

            // Probes.
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(p) = c.get(probe) else { continue };
                let pid = format!("{cid} {probe}");
                if let Some(h) = p.get("httpGet") {
                    let port = h.get("port").cloned().unwrap_or(Value::Null);
                    if !has_port(c, &port) {
                        errs.push(format!(
                            "{pid}: httpGet port {port} is not a port of the container"
                        ));
                    }
                    let path = str_at(h, "/path").unwrap_or("/");
                    if !HTTP_ENDPOINTS.contains(&path) {
                        errs.push(format!(
                            "{pid}: httpGet path {path} is not one of {HTTP_ENDPOINTS:?}"
                        ));
                    }
                    let metrics_port = listens.get("metrics").and_then(|a| port_of(a));
                    let probed = list(c, "/ports").iter().find(|cp| match &port {
                        Value::Number(n) => {
                            cp.get("containerPort") == Some(&Value::Number(n.clone()))
                        }
                        Value::String(s) => str_at(cp, "/name") == Some(s),
                        _ => false,
                    });
                    let probed = probed
                        .and_then(|cp| cp.get("containerPort"))
                        .and_then(Value::as_u64);
                    if probed.is_some() && probed != metrics_port {
                        errs.push(format!(
                            "{pid}: HTTP probe on port {probed:?}, but the metrics listener is on {metrics_port:?}"
                        ));
                    }
                }
                if let Some(t) = p.get("tcpSocket") {
                    let port = t.get("port").cloned().unwrap_or(Value::Null);
                    if !has_port(c, &port) {
                        errs.push(format!(
                            "{pid}: tcpSocket port {port} is not a port of the container"
                        ));
                    }
                }
                if let Some(g) = p.get("grpc") {
                    let port = g.get("port").and_then(Value::as_u64);
                    let grpc_port = listens.get("grpc").and_then(|a| port_of(a));
                    if port.is_none() || port != grpc_port {
                        errs.push(format!(
                            "{pid}: grpc probe port {port:?} must be the number of the gRPC listener ({grpc_port:?})"
                        ));
                    }
                }
            }
        }
    }

    // Services and PodDisruptionBudgets select pods of a workload, whose containers have the target ports.
    for s in docs.iter().filter(|d| d.kind == "Service") {
        let selector = string_map(&s.v, "/spec/selector");
        let targets: Vec<&Doc> = workloads(&docs)
            .filter(|w| selects(&selector, &pod_labels(w)))
            .collect();
        if targets.is_empty() {
            errs.push(format!(
                "{}: selector {selector:?} matches no workload's pod labels",
                s.id()
            ));
        }
        for p in list(&s.v, "/spec/ports") {
            let target = p
                .get("targetPort")
                .or_else(|| p.get("port"))
                .cloned()
                .unwrap_or(Value::Null);
            for w in &targets {
                if !list(&w.v, "/spec/template/spec/containers")
                    .iter()
                    .any(|c| has_port(c, &target))
                {
                    errs.push(format!(
                        "{}: port {} targets {target}, which no container of {} declares",
                        s.id(),
                        str_at(p, "/name").unwrap_or("?"),
                        w.id()
                    ));
                }
            }
        }
    }
    for pdb in docs.iter().filter(|d| d.kind == "PodDisruptionBudget") {
        let selector = string_map(&pdb.v, "/spec/selector/matchLabels");
        if !workloads(&docs).any(|w| selects(&selector, &pod_labels(w))) {
            errs.push(format!(
                "{}: selector {selector:?} matches no workload's pod labels",
                pdb.id()
            ));
        }
    }
    for w in docs.iter().filter(|d| d.kind == "Deployment") {
        if !docs
            .iter()
            .filter(|d| d.kind == "PodDisruptionBudget")
            .any(|pdb| {
                selects(
                    &string_map(&pdb.v, "/spec/selector/matchLabels"),
                    &pod_labels(w),
                )
            })
        {
            errs.push(format!(
                "{}: no PodDisruptionBudget covers its pods",
                w.id()
            ));
        }
    }

    // KEDA.
    for ta in docs.iter().filter(|d| d.kind == "TriggerAuthentication") {
        for r in list(&ta.v, "/spec/secretTargetRef") {
            let from = format!(
                "{} secretTargetRef {}",
                ta.id(),
                str_at(r, "/parameter").unwrap_or("?")
            );
            check_ref(
                &docs,
                &mut errs,
                &from,
                "Secret",
                str_at(r, "/name"),
                str_at(r, "/key"),
                false,
            );
        }
    }
    let scaled: Vec<&Doc> = docs.iter().filter(|d| d.kind == "ScaledObject").collect();
    if scaled.is_empty() {
        errs.push("k8s/: no KEDA ScaledObject scales the workers".to_string());
    }
    for so in scaled {
        let sid = so.id();
        let kind = str_at(&so.v, "/spec/scaleTargetRef/kind").unwrap_or("Deployment");
        let name = str_at(&so.v, "/spec/scaleTargetRef/name").unwrap_or("?");
        match find(&docs, kind, name) {
            None => errs.push(format!(
                "{sid}: scaleTargetRef {kind} {name} is not defined in k8s/"
            )),
            Some(target) => {
                if target.v.pointer("/spec/replicas").is_some() {
                    errs.push(format!(
                        "{sid}: scales {}, which sets spec.replicas (every apply would fight KEDA)",
                        target.id()
                    ));
                }
                let subs: Vec<String> = list(&target.v, "/spec/template/spec/containers")
                    .iter()
                    .map(|c| subcommand(&args(c)).join(" "))
                    .collect();
                if !subs.iter().any(|s| s == "worker") {
                    errs.push(format!(
                        "{sid}: scales {}, which runs {subs:?}, not `companion worker`",
                        target.id()
                    ));
                }
                let grace = target
                    .v
                    .pointer("/spec/template/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(30);
                if grace < 300 {
                    errs.push(format!(
                        "{}: terminationGracePeriodSeconds {grace} is too short for a worker to drain a job",
                        target.id()
                    ));
                }
            }
        }
        let triggers = list(&so.v, "/spec/triggers");
        let rabbit: Vec<&Value> = triggers
            .iter()
            .filter(|t| str_at(t, "/type") == Some("rabbitmq"))
            .collect();
        if rabbit.is_empty() {
            errs.push(format!("{sid}: no rabbitmq trigger"));
        }
        for t in rabbit {
            let queue = str_at(t, "/metadata/queueName");
            if queue != Some(QUEUE) {
                errs.push(format!(
                    "{sid}: rabbitmq trigger watches queue {queue:?}, not {QUEUE:?}"
                ));
            }
            let mode = str_at(t, "/metadata/mode");
            if mode != Some("QueueLength") {
                errs.push(format!(
                    "{sid}: rabbitmq trigger mode is {mode:?}, not QueueLength"
                ));
            }
            let auth_kind = str_at(t, "/authenticationRef/kind").unwrap_or("TriggerAuthentication");
            let host_in_metadata = t.pointer("/metadata/host").is_some()
                || t.pointer("/metadata/hostFromEnv").is_some();
            match str_at(t, "/authenticationRef/name") {
                Some(auth) => match find(&docs, auth_kind, auth) {
                    None => errs.push(format!(
                        "{sid}: authenticationRef {auth_kind} {auth} is not defined in k8s/"
                    )),
                    Some(ta) => {
                        let gives_host = list(&ta.v, "/spec/secretTargetRef")
                            .iter()
                            .any(|r| str_at(r, "/parameter") == Some("host"));
                        if !gives_host && !host_in_metadata {
                            errs.push(format!(
                                "{sid}: neither the trigger nor {} gives the RabbitMQ host",
                                ta.id()
                            ));
                        }
                    }
                },
                None if host_in_metadata => {}
                None => errs.push(format!(
                    "{sid}: rabbitmq trigger has no authenticationRef and no host"
                )),
            }
        }
    }

    assert!(
        errs.is_empty(),
        "k8s/ has drifted:\n  {}",
        errs.join("\n  ")
    );
}

#[test]
fn dockerfile_builds_what_the_manifests_run() {
    let root = repo();
    let instrs = dockerfile();
    let mut errs = Vec::new();

    let ignored: Vec<String> = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore at the repo root")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    if !ignored.iter().any(|i| i == "target") || !ignored.iter().any(|i| i == ".git") {
        errs.push(".dockerignore: must exclude target/ and .git".to_string());
    }

    for (instr, rest) in instrs.iter().filter(|(i, _)| i == "COPY" || i == "ADD") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let operands: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some((_, sources)) = operands.split_last() else {
            errs.push(format!("Dockerfile: {instr} {rest}: no source"));
            continue;
        };
        for src in sources {
            let src = src.trim_end_matches('/');
            if !root.join(src).exists() {
                errs.push(format!(
                    "Dockerfile: {instr} {rest}: source {src} does not exist in the repository"
                ));
            }
            let top = src.split('/').next().unwrap_or(src);
            if ignored.iter().any(|i| i == src || i == top) {
                errs.push(format!(
                    "Dockerfile: {instr} {rest}: source {src} is excluded by .dockerignore"
                ));
            }
        }
    }

    let last_from = instrs
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("Dockerfile: no FROM");
    let entrypoint = instrs
        .iter()
        .rfind(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, rest)| rest.clone());
    match entrypoint.as_deref().map(serde_json::from_str::<Vec<String>>) {
        Some(Ok(e)) if e == ["companion"] => {}
        other => errs.push(format!(
            "Dockerfile: the image's ENTRYPOINT must be [\"companion\"] in exec form (k8s/ passes only args), got {other:?}"
        )),
    }
    match dockerfile_uid(&instrs) {
        Some(0) | None => errs.push(format!(
            "Dockerfile: the final stage ({}) must run as a numeric non-root USER",
            instrs[last_from].1
        )),
        Some(_) => {}
    }

    let arg = instrs
        .iter()
        .find(|(i, rest)| i == "ARG" && rest.starts_with("TARGET_CPU"))
        .map(|(_, rest)| rest.as_str());
    if arg != Some("TARGET_CPU=x86-64-v3") {
        errs.push(format!(
            "Dockerfile: expected `ARG TARGET_CPU=x86-64-v3`, got {arg:?}"
        ));
    }
    let runs: Vec<&str> = instrs
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    let build = runs.iter().find(|r| r.contains("cargo build"));
    match build {
        None => errs.push("Dockerfile: no RUN with cargo build".to_string()),
        Some(b) => {
            for needle in [
                "-p companion-cli",
                "--release",
                "target-cpu=$TARGET_CPU",
                "GGML_NATIVE=OFF",
            ] {
                if !b.contains(needle) {
                    errs.push(format!("Dockerfile: the cargo build RUN lacks {needle:?}"));
                }
            }
        }
    }

    assert!(
        errs.is_empty(),
        "Dockerfile has drifted:\n  {}",
        errs.join("\n  ")
    );
}

/// `companion <words> --help`, or why it failed.
fn help(words: &[String]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_companion"))
        .args(words)
        .arg("--help")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().next().unwrap_or("").to_string())
    }
}

/// Whether `text` mentions `word` as a whole token (so `--listen` does not match `--metrics-listen`).
fn mentions(text: &str, word: &str) -> bool {
    let edge =
        |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    text.match_indices(word).any(|(i, _)| {
        edge(text[..i].chars().next_back()) && edge(text[i + word.len()..].chars().next())
    })
}

#[test]
fn manifests_use_only_what_the_binary_accepts() {
    let docs = load();
    let mut errs = Vec::new();
    let mut helps: BTreeMap<Vec<String>, Result<String, String>> = BTreeMap::new();
    let mut help_of = |words: &[String]| {
        helps
            .entry(words.to_vec())
            .or_insert_with(|| help(words))
            .clone()
    };

    // Keys injected with envFrom, and the help texts of the subcommands that receive them.
    let mut shared: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();

    for w in workloads(&docs) {
        for c in containers(w) {
            let cid = container_id(w, c);
            let args = args(c);
            let sub = subcommand(&args);
            if sub.is_empty() {
                continue;
            }
            let text = match help_of(&sub) {
                Ok(t) => t,
                Err(e) => {
                    errs.push(format!(
                        "{cid}: runs `companion {}`, but `companion {} --help` fails: {e}",
                        sub.join(" "),
                        sub.join(" ")
                    ));
                    continue;
                }
            };
            for flag in flags(&args) {
                if !mentions(&text, &flag) {
                    errs.push(format!(
                        "{cid}: `companion {}` has no flag {flag} (not in its --help)",
                        sub.join(" ")
                    ));
                }
            }
            for e in list(c, "/env") {
                let Some(name) = str_at(e, "/name") else {
                    continue;
                };
                if name.starts_with("COMPANION_")
                    && !NON_FLAG_ENV.contains(&name)
                    && !mentions(&text, name)
                {
                    errs.push(format!(
                        "{cid}: env {name} is not read by `companion {}` (not in its --help)",
                        sub.join(" ")
                    ));
                }
            }
            for from in list(c, "/envFrom") {
                for r in ["configMapRef", "secretRef"] {
                    if let Some(name) = from.get(r).and_then(|r| str_at(r, "/name")) {
                        shared
                            .entry((kind_of_ref(r).to_string(), name.to_string()))
                            .or_default()
                            .push(text.clone());
                    }
                }
            }
        }
    }
    for ((kind, name), texts) in &shared {
        let Some(doc) = find(&docs, kind, name) else {
            continue;
        };
        for key in keys(doc) {
            if key.starts_with("COMPANION_")
                && !NON_FLAG_ENV.contains(&key.as_str())
                && !texts.iter().any(|t| mentions(t, &key))
            {
                errs.push(format!(
                    "{}: {key} is read by none of the subcommands the pods run with it (not in their --help)",
                    doc.id()
                ));
            }
        }
    }

    // The Dockerfile's own `companion …` commands (the models stage).
    for (_, run) in dockerfile().iter().filter(|(i, _)| i == "RUN") {
        for part in run.split(['&', ';', '|']) {
            let mut words = part.split_whitespace();
            if words.next() != Some("companion") {
                continue;
            }
            let args: Vec<String> = words.map(str::to_string).collect();
            let sub = subcommand(&args);
            if let Err(e) = help_of(&sub) {
                errs.push(format!(
                    "Dockerfile: RUN {}: `companion {} --help` fails: {e}",
                    part.trim(),
                    sub.join(" ")
                ));
            }
        }
    }

    assert!(
        errs.is_empty(),
        "the manifests use subcommands, flags or variables the binary does not have:\n  {}",
        errs.join("\n  ")
    );
}
