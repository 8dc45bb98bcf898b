//! Which pod a user's calls go to: the template, the user name as a DNS label (KubeSpawner's
//! escaping, or raw), names refused rather than routed elsewhere, and where a pod's host is.

use kbase_spark_gateway::route::{escape_kubespawner, Escaping, Override, Resolver, RouteConfig, Router};

fn router(escaping: Escaping, template: &str) -> Router {
    Router::new(&RouteConfig {
        template: template.into(),
        namespace: "jupyterhub-prod".into(),
        port: 15002,
        escaping,
        overrides: Vec::new(),
    })
    .unwrap()
}

const TEMPLATE: &str = "jupyter-{username}.{namespace}.svc.cluster.local";

#[test]
fn kubespawner_escaping() {
    let table = [
        ("alice", "alice"),
        ("user123", "user123"),
        ("jane_doe", "jane-5fdoe"),
        ("Alice", "-41lice"),
        ("a-b", "a-2db"),
        ("a.b", "a-2eb"),
        ("é", "-c3-a9"),
        ("", ""),
    ];
    for (name, label) in table {
        assert_eq!(escape_kubespawner(name), label, "{name:?}");
    }
}

#[test]
fn pods_by_kubespawner_escaping() {
    let r = router(Escaping::KubeSpawner, TEMPLATE);
    let host = |user: &str| r.pod_for(user).map(|p| p.authority.as_str().to_owned());
    assert_eq!(host("alice").unwrap(), "jupyter-alice.jupyterhub-prod.svc.cluster.local:15002");
    assert_eq!(host("jane_doe").unwrap(), "jupyter-jane-5fdoe.jupyterhub-prod.svc.cluster.local:15002");
    assert_eq!(host("Alice").unwrap(), "jupyter--41lice.jupyterhub-prod.svc.cluster.local:15002");
    // "jupyter-" + 55 characters is a label of 63, the most DNS allows; one more is refused.
    let long = "a".repeat(55);
    assert!(host(&long).unwrap().starts_with(&format!("jupyter-{long}.")));
    let e = host(&"a".repeat(56)).unwrap_err();
    assert!(e.contains("64 characters") && e.contains("63") && e.contains(&"a".repeat(56)), "{e}");
    // Escaping makes a name longer: 19 underscores are 57 characters.
    assert!(host(&"_".repeat(19)).is_err());
    let e = host("").unwrap_err();
    assert!(e.contains("starts or ends with '-'"), "{e}");
    // A label may not start with '-': a template that puts the name first refuses "_x".
    let first = router(Escaping::KubeSpawner, "{username}.{namespace}");
    assert!(first.pod_for("_x").is_err());
    assert_eq!(first.pod_for("x_").unwrap().host, "x-5f.jupyterhub-prod");
}

#[test]
fn raw_names_as_the_python_proxy_used_them_and_refused_when_no_host() {
    let r = router(Escaping::Raw, TEMPLATE);
    assert_eq!(r.pod_for("alice").unwrap().host, "jupyter-alice.jupyterhub-prod.svc.cluster.local");
    assert_eq!(r.pod_for("Alice").unwrap().host, "jupyter-Alice.jupyterhub-prod.svc.cluster.local");
    for (name, why) in [("jane_doe", "'_'"), ("a.b", "'.'"), ("a b", "' '"), ("é", "'é'")] {
        let e = r.pod_for(name).unwrap_err();
        assert!(e.contains(why) && e.contains(&format!("'{name}'")), "{name}: {e}");
        assert!(!e.contains("jupyterhub-prod"), "no host is named: {e}");
    }
    assert!(r.pod_for(&"a".repeat(56)).is_err());
    assert!(router(Escaping::Raw, "{username}.{namespace}").pod_for("-a").is_err());
}

#[test]
fn templates_and_namespaces_that_cannot_make_hosts_are_refused_at_start() {
    let cfg = |template: &str, namespace: &str| RouteConfig {
        template: template.into(),
        namespace: namespace.into(),
        port: 15002,
        escaping: Escaping::KubeSpawner,
        overrides: Vec::new(),
    };
    assert!(cfg(TEMPLATE, "jupyterhub-prod").check().is_ok());
    assert_eq!(cfg(TEMPLATE, "bad_ns").check().unwrap_err().0, "BACKEND_NAMESPACE");
    assert_eq!(cfg(TEMPLATE, "a.b").check().unwrap_err().0, "BACKEND_NAMESPACE");
    for t in ["jupyter-{user}", "jupyter-{username", "jupyter {username}", "jupyter_{username}", "{username}..x"] {
        assert_eq!(cfg(t, "ns").check().unwrap_err().0, "SERVICE_TEMPLATE", "{t}");
    }
    // Literal braces as in Python's str.format; a fixed host is allowed (one shared server).
    assert!(cfg("{{username}}", "ns").check().is_err(), "'{{username}}' is the literal text {{username}}");
    assert!(cfg("spark.{namespace}.svc", "ns").check().is_ok());
    assert!(!Router::new(&cfg("spark.{namespace}.svc", "ns")).unwrap().is_per_user());
}

#[tokio::test]
async fn overrides_win_and_everything_else_goes_to_the_system_resolver() {
    let o: Override = "Jupyter-Alice.jupyterhub-prod.svc.cluster.local:15002=127.0.0.1:4321".parse().unwrap();
    let r = Resolver::new(&[o]);
    let got = r.resolve("jupyter-alice.jupyterhub-prod.svc.cluster.local", 15002).await.unwrap();
    assert_eq!(got, ["127.0.0.1:4321".parse().unwrap()]);
    // Another port of the same host is not overridden.
    assert!(r.resolve("jupyter-alice.jupyterhub-prod.svc.cluster.local", 15003).await.is_err());
    // /etc/hosts, as any program on the machine sees it.
    let local = r.resolve("localhost", 15002).await.unwrap();
    assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 15002), "{local:?}");
    assert!(r.resolve("no-such-host.invalid", 15002).await.is_err());
}
