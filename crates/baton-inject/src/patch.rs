//! Pod -> JSONPatch (RFC 6902): what `baton inject` adds to a pod annotated `baton.dev/inject:
//! "true"`: Baton and Envoy as native sidecars (init containers with `restartPolicy: Always`, so they
//! start before the app and stop after it), the volumes they share, and an annotation that marks the
//! pod as done. It never touches the app's own containers, and never patches a pod twice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::config::{Resources, Sidecar, check_object_name};

/// `"true"` asks for injection; `"false"` or no annotation does not.
pub const ANNOTATION_INJECT: &str = "baton.dev/inject";
/// The ConfigMap (key `baton.yaml`) with this pod's Baton configuration.
pub const ANNOTATION_CONFIG: &str = "baton.dev/config";
/// The Secret (key `client-secret`) with Baton's OAuth client secret.
pub const ANNOTATION_CLIENT_SECRET: &str = "baton.dev/client-secret";
/// Set to `injected` on a patched pod.
pub const ANNOTATION_STATUS: &str = "baton.dev/status";

pub const BATON_CONTAINER: &str = "baton";
pub const ENVOY_CONTAINER: &str = "baton-envoy";
/// The name of Baton's admin port (probes, and `/metrics`, which k8s/monitoring's PodMonitor scrapes).
pub const ADMIN_PORT: &str = "baton-admin";
const VOLUME_SOCKET: &str = "baton-socket";
const VOLUME_CONFIG: &str = "baton-config";
const VOLUME_SECRET: &str = "baton-client-secret";
const VOLUME_ACTOR: &str = "baton-actor-token";
const VOLUME_ENVOY: &str = "baton-envoy-config";

/// Where the mounts land in the Baton container; the ConfigMap's `baton.yaml` must use these paths.
pub const CONFIG_DIR: &str = "/etc/baton/config";
pub const SECRET_DIR: &str = "/etc/baton/secret";
pub const ACTOR_TOKEN_DIR: &str = "/var/run/secrets/baton";
pub const ENVOY_DIR: &str = "/etc/envoy";

/// What to do with a pod.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Not asked for, or already injected: admit unchanged.
    Leave(&'static str),
    /// Admit with these JSONPatch operations.
    Patch(Vec<Value>),
}

/// Why an annotated pod cannot be injected; the pod is refused (fail closed: a pod that asked for
/// Baton never runs without it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("annotation {ANNOTATION_INJECT} is `{0}`: use \"true\" or \"false\"")]
    BadInjectValue(String),
    #[error("annotation {annotation}: `{value}` {why}")]
    BadObjectName {
        annotation: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("the pod already has a volume named `{0}`, which the injector needs")]
    VolumeNameTaken(String),
    #[error("the pod already declares port {0}, which the injected {1} container needs")]
    PortTaken(i32, &'static str),
    /// Only Baton and Envoy may be in the socket's group or run as their users: anything else in
    /// the pod that did could connect to Baton (or read its files) as they do.
    #[error("{0} would share the identity that guards Baton's socket: {1}")]
    SocketIdentityShared(String, &'static str),
}

impl Refusal {
    /// A stable reason code, for the log line and the status reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadInjectValue(_) => "inject_annotation_invalid",
            Self::BadObjectName { .. } => "object_name_invalid",
            Self::VolumeNameTaken(_) => "volume_name_taken",
            Self::PortTaken(..) => "port_taken",
            Self::SocketIdentityShared(..) => "socket_identity_shared",
        }
    }
}

/// Decide what to do with `pod` and build the patch.
pub fn plan(pod: &Pod, sidecar: &Sidecar) -> Result<Plan, Refusal> {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    match annotation(ANNOTATION_INJECT) {
        None | Some("false") => return Ok(Plan::Leave("not_requested")),
        Some("true") => {}
        Some(other) => return Err(Refusal::BadInjectValue(truncate(other))),
    }
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    // Reinvocation or a pod copied from an injected one: the containers are already there.
    let ours = |c: &Container| c.name == BATON_CONTAINER || c.name == ENVOY_CONTAINER;
    if annotation(ANNOTATION_STATUS) == Some("injected") || containers.iter().chain(init).any(ours) {
        return Ok(Plan::Leave("already_injected"));
    }

    let name = |key: &'static str, default: &str| -> Result<String, Refusal> {
        let value = annotation(key).unwrap_or(default);
        check_object_name(value).map_err(|why| Refusal::BadObjectName {
            annotation: key,
            value: truncate(value),
            why,
        })?;
        Ok(value.to_owned())
    };
    let config_map = name(ANNOTATION_CONFIG, &sidecar.default_config)?;
    let client_secret = name(ANNOTATION_CLIENT_SECRET, &sidecar.default_client_secret)?;

    let volumes = spec.and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    let new_volumes = volumes_for(sidecar, &config_map, &client_secret);
    if let Some(taken) = new_volumes
        .iter()
        .find(|v| volumes.iter().any(|existing| existing.name == v.name))
    {
        return Err(Refusal::VolumeNameTaken(taken.name.clone()));
    }
    let declared = containers
        .iter()
        .chain(init)
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port);
    for port in declared {
        if port == sidecar.admin_port {
            return Err(Refusal::PortTaken(port, BATON_CONTAINER));
        }
        if port == sidecar.envoy_health_port {
            return Err(Refusal::PortTaken(port, ENVOY_CONTAINER));
        }
    }

    check_identities(pod, sidecar)?;

    let mut ops = Vec::new();
    let sidecars = [baton_container(sidecar), envoy_container(sidecar)];
    if spec.and_then(|s| s.init_containers.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": sidecars}));
    } else {
        // First, in this order: Baton before Envoy (Envoy asks it), both before any other init
        // container (which may already make outbound calls).
        for (i, c) in sidecars.iter().enumerate() {
            ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}"), "value": c}));
        }
    }
    if spec.and_then(|s| s.volumes.as_ref()).is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": new_volumes}));
    } else {
        for v in &new_volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    // The inject annotation is there, so `annotations` exists; `/` in a key is `~1` (RFC 6901).
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", ANNOTATION_STATUS.replace('~', "~0").replace('/', "~1")),
        "value": "injected",
    }));
    Ok(Plan::Patch(ops))
}

/// Refuse a pod in which anything but the two sidecars would be in the socket's group (so could
/// connect to Baton) or run as Baton's or Envoy's user. The pod's `fsGroup` and
/// `supplementalGroups` reach every container, so neither may name the socket group; a container's
/// own `runAsUser`/`runAsGroup`, else the pod's, must not be the sidecars'. An image's default
/// user is not visible here: set them explicitly (the examples do).
fn check_identities(pod: &Pod, sidecar: &Sidecar) -> Result<(), Refusal> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let pod_context = spec.security_context.as_ref();
    let shared = |what: String, why| Err(Refusal::SocketIdentityShared(what, why));
    if pod_context.and_then(|c| c.fs_group) == Some(sidecar.socket_group) {
        return shared("the pod's fsGroup".into(), "it is the socket group");
    }
    if pod_context
        .and_then(|c| c.supplemental_groups.as_ref())
        .is_some_and(|groups| groups.contains(&sidecar.socket_group))
    {
        return shared("the pod's supplementalGroups".into(), "they hold the socket group");
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| (&c.name, c.security_context.as_ref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (&c.name, c.security_context.as_ref()));
    for (name, own) in containers.chain(ephemeral) {
        let user = own
            .and_then(|s| s.run_as_user)
            .or(pod_context.and_then(|p| p.run_as_user));
        let group = own
            .and_then(|s| s.run_as_group)
            .or(pod_context.and_then(|p| p.run_as_group));
        if group == Some(sidecar.socket_group) {
            return shared(format!("container `{}`", truncate(name)), "it runs in the socket group");
        }
        if user.is_some_and(|u| u == sidecar.baton_user || u == sidecar.envoy_user) {
            return shared(
                format!("container `{}`", truncate(name)),
                "it runs as Baton's or Envoy's user",
            );
        }
    }
    Ok(())
}

/// An annotation value echoed in a message is cut short: it is user input of any size.
fn truncate(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

// === The containers ===

/// A sidecar's hardening. `user` is its own; the group is the socket's, which only the two
/// sidecars have: Baton creates the socket (mode 0660) in it and Envoy connects through it.
fn security_context(user: i64, sidecar: &Sidecar) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(sidecar.socket_group),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn resources(r: &Resources) -> ResourceRequirements {
    let map = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
    };
    ResourceRequirements {
        requests: map(&r.requests),
        limits: map(&r.limits),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn baton_container(sidecar: &Sidecar) -> Container {
    Container {
        name: BATON_CONTAINER.into(),
        image: Some(sidecar.baton_image.clone()),
        image_pull_policy: Some(sidecar.image_pull_policy.clone()),
        args: Some(vec![
            "run".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/baton.yaml"),
        ]),
        // A native sidecar: starts before the app containers, stops after them.
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT.into()),
            container_port: sidecar.admin_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The app starts once the process serves; the pod is Ready once Baton is.
        startup_probe: Some(http_probe("/healthz", ADMIN_PORT, 1, 30)),
        liveness_probe: Some(http_probe("/healthz", ADMIN_PORT, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", ADMIN_PORT, 5, 2)),
        resources: Some(resources(&sidecar.baton_resources)),
        security_context: Some(security_context(sidecar.baton_user, sidecar)),
        volume_mounts: Some(vec![
            mount(VOLUME_CONFIG, CONFIG_DIR, true),
            mount(VOLUME_SECRET, SECRET_DIR, true),
            mount(VOLUME_ACTOR, ACTOR_TOKEN_DIR, true),
            mount(VOLUME_SOCKET, &sidecar.socket_dir, false),
        ]),
        ..Default::default()
    }
}

fn envoy_container(sidecar: &Sidecar) -> Container {
    Container {
        name: ENVOY_CONTAINER.into(),
        image: Some(sidecar.envoy_image.clone()),
        image_pull_policy: Some(sidecar.image_pull_policy.clone()),
        command: Some(vec!["envoy".into()]),
        args: Some(vec![
            "-c".into(),
            format!("{ENVOY_DIR}/envoy.yaml"),
            "--disable-hot-restart".into(),
            "--log-level".into(),
            "warn".into(),
        ]),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some("envoy-health".into()),
            container_port: sidecar.envoy_health_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        startup_probe: Some(http_probe("/ready", "envoy-health", 1, 30)),
        readiness_probe: Some(http_probe("/ready", "envoy-health", 5, 2)),
        resources: Some(resources(&sidecar.envoy_resources)),
        security_context: Some(security_context(sidecar.envoy_user, sidecar)),
        volume_mounts: Some(vec![
            mount(VOLUME_ENVOY, ENVOY_DIR, true),
            mount(VOLUME_SOCKET, &sidecar.socket_dir, false),
        ]),
        ..Default::default()
    }
}

fn volumes_for(sidecar: &Sidecar, config_map: &str, client_secret: &str) -> Vec<Volume> {
    vec![
        Volume {
            name: VOLUME_SOCKET.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_CONFIG.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_SECRET.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(client_secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_ACTOR.into(),
            projected: Some(ProjectedVolumeSource {
                // Only Baton mounts it; readable by its non-root UID without a pod fsGroup.
                default_mode: Some(0o444),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(sidecar.actor_audience.clone()),
                        expiration_seconds: Some(sidecar.actor_expiration_seconds),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_ENVOY.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: sidecar.envoy_bootstrap.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InjectConfig;

    fn sidecar() -> Sidecar {
        InjectConfig::from_yaml("baton:\n  image: registry.example/baton:test\n")
            .expect("config")
            .sidecar
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn annotated(annotations: Value) -> Pod {
        pod(json!({
            "metadata": {"name": "app", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }))
    }

    #[test]
    fn a_pod_without_the_annotation_is_left_alone() {
        let p = pod(json!({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(plan(&p, &sidecar()), Ok(Plan::Leave("not_requested")));
        let p = annotated(json!({"baton.dev/inject": "false"}));
        assert_eq!(plan(&p, &sidecar()), Ok(Plan::Leave("not_requested")));
    }

    #[test]
    fn an_annotated_pod_gets_both_sidecars_first_and_the_volumes() {
        let p = annotated(json!({"baton.dev/inject": "true", "baton.dev/config": "orders-baton"}));
        let Ok(Plan::Patch(ops)) = plan(&p, &sidecar()) else {
            panic!("expected a patch")
        };
        assert_eq!(ops[0]["path"], "/spec/initContainers");
        assert_eq!(ops[0]["value"][0]["name"], BATON_CONTAINER);
        assert_eq!(ops[0]["value"][1]["name"], ENVOY_CONTAINER);
        assert_eq!(ops[0]["value"][0]["restartPolicy"], "Always");
        assert_eq!(ops[1]["path"], "/spec/volumes");
        let volumes = ops[1]["value"].as_array().expect("volumes");
        assert!(volumes.iter().any(|v| v["configMap"]["name"] == "orders-baton"));
        assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "baton-client"));
        assert_eq!(ops[2]["path"], "/metadata/annotations/baton.dev~1status");
    }

    #[test]
    fn existing_init_containers_and_volumes_are_kept_and_sidecars_go_first() {
        let p = pod(json!({
            "metadata": {"name": "app", "annotations": {"baton.dev/inject": "true"}},
            "spec": {
                "initContainers": [{"name": "migrate"}],
                "containers": [{"name": "app"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        }));
        let Ok(Plan::Patch(ops)) = plan(&p, &sidecar()) else {
            panic!("expected a patch")
        };
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(&paths[..2], ["/spec/initContainers/0", "/spec/initContainers/1"]);
        assert!(paths[2..7].iter().all(|p| *p == "/spec/volumes/-"), "{paths:?}");
    }

    #[test]
    fn an_injected_pod_is_not_patched_again() {
        let p = annotated(json!({"baton.dev/inject": "true", "baton.dev/status": "injected"}));
        assert_eq!(plan(&p, &sidecar()), Ok(Plan::Leave("already_injected")));
        let p = pod(json!({
            "metadata": {"annotations": {"baton.dev/inject": "true"}},
            "spec": {"initContainers": [{"name": "baton"}], "containers": [{"name": "app"}]},
        }));
        assert_eq!(plan(&p, &sidecar()), Ok(Plan::Leave("already_injected")));
    }

    #[test]
    fn bad_annotations_and_collisions_are_refused() {
        let refused = |p: Pod| plan(&p, &sidecar()).expect_err("refused").as_str();
        assert_eq!(
            refused(annotated(json!({"baton.dev/inject": "yes"}))),
            "inject_annotation_invalid"
        );
        assert_eq!(
            refused(annotated(
                json!({"baton.dev/inject": "true", "baton.dev/config": "../etc"})
            )),
            "object_name_invalid"
        );
        let p = pod(json!({
            "metadata": {"annotations": {"baton.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "baton-socket", "emptyDir": {}}]},
        }));
        assert_eq!(refused(p), "volume_name_taken");
        let p = pod(json!({
            "metadata": {"annotations": {"baton.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9901}]}]},
        }));
        assert_eq!(refused(p), "port_taken");
    }

    #[test]
    fn nothing_else_in_the_pod_may_share_the_sockets_group_or_the_sidecars_users() {
        let with = |pod_context: Value, app_context: Value| {
            pod(json!({
                "metadata": {"annotations": {"baton.dev/inject": "true"}},
                "spec": {"securityContext": pod_context,
                         "containers": [{"name": "app", "securityContext": app_context}]},
            }))
        };
        let cases = [
            // (what, pod securityContext, app securityContext, refused)
            (
                "distinct ids",
                json!({"fsGroup": 2000}),
                json!({"runAsUser": 10001, "runAsGroup": 10001}),
                false,
            ),
            (
                "the socket group as fsGroup",
                json!({"fsGroup": 65532}),
                json!({}),
                true,
            ),
            (
                "the socket group as a supplemental group",
                json!({"supplementalGroups": [5, 65532]}),
                json!({}),
                true,
            ),
            (
                "the app in the socket group",
                json!({}),
                json!({"runAsGroup": 65532}),
                true,
            ),
            (
                "the pod's default group is the socket group",
                json!({"runAsGroup": 65532}),
                json!({}),
                true,
            ),
            (
                "...unless the app overrides it",
                json!({"runAsGroup": 65532}),
                json!({"runAsGroup": 10001}),
                false,
            ),
            ("the app as Baton's user", json!({}), json!({"runAsUser": 65532}), true),
            ("the app as Envoy's user", json!({"runAsUser": 65533}), json!({}), true),
        ];
        for (what, pod_context, app_context, refused) in cases {
            let outcome = plan(&with(pod_context, app_context), &sidecar());
            match (refused, outcome) {
                (true, Err(refusal)) => assert_eq!(refusal.as_str(), "socket_identity_shared", "{what}"),
                (false, Ok(Plan::Patch(_))) => {}
                (_, other) => panic!("{what}: {other:?}"),
            }
        }
        // The injected sidecars: each its own user, the socket's group.
        let Ok(Plan::Patch(ops)) = plan(&annotated(json!({"baton.dev/inject": "true"})), &sidecar()) else {
            panic!("expected a patch")
        };
        let context = |i: usize| ops[0]["value"][i]["securityContext"].clone();
        assert_eq!(
            (context(0)["runAsUser"].clone(), context(0)["runAsGroup"].clone()),
            (json!(65532), json!(65532))
        );
        assert_eq!(
            (context(1)["runAsUser"].clone(), context(1)["runAsGroup"].clone()),
            (json!(65533), json!(65532))
        );
    }

    /// An API server newer than k8s-openapi's feature sends fields it does not know: still a pod.
    #[test]
    fn fields_from_a_newer_kubernetes_are_ignored() {
        let p = pod(json!({
            "metadata": {"annotations": {"baton.dev/inject": "true"}, "futureMeta": 1},
            "spec": {"containers": [{"name": "app", "futureField": {"x": 1}}], "futureSpec": true},
        }));
        assert!(matches!(plan(&p, &sidecar()), Ok(Plan::Patch(_))));
    }

    #[test]
    fn a_long_annotation_is_cut_in_the_message() {
        let long = "y".repeat(10_000);
        let err = plan(&annotated(json!({"baton.dev/inject": long})), &sidecar()).expect_err("refused");
        assert!(err.to_string().len() < 200, "{err}");
    }
}
