//! Deferred jobs end to end (issue 14 §4), against the real panva oidc-provider as the token
//! service and the real Envoy: a worker's `Defer` obtains a grant bound to the job, `Redeem` later
//! exchanges it for a destination's token while the user is live, with the job id in the audit
//! record; a job whose user's session ended (a real sign-in and logout at the provider, whose
//! back-channel logout token reaches Baton) fails `subject_revoked` while another user's job
//! runs, a revoked job `job_revoked`, an expired grant `grant_expired`, a destination the grant
//! does not name `destination_not_in_grant`, a caller the destination's policy does not allow (at Defer and again
//! at Redeem) `source_not_allowed`; a grant presented through Envoy (or to Exchange) as an ordinary
//! subject token is refused; malformed requests get `job_request_invalid` and change nothing. Baton
//! keeps nothing of the job: its token cache is as empty after Defer as before. `baton sts`, the
//! development token service, issues job grants too.

use std::time::Duration;

use baton_envoy::broker::pb::delegation_broker_client::DelegationBrokerClient;
use baton_envoy::broker::pb::{DeferRequest, DeferResponse, RedeemRequest, RedeemResponse};
use baton_test_support::oidc_session::{APP_CLIENT_ID, Session, backchannel_peer};
use baton_test_support::*;
use tonic::transport::Channel;

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const ADMIN_SECRET: &str = "deferred-admin-secret-for-tests-0123456789";
const JOBS: &str = "baton-jobs";
/// What users sign in for at oidc-provider: the audience of their session's access tokens.
const APP: &str = "https://app.example";

struct Jobs {
    scratch: Scratch,
    idp: TokenService,
    baton: Baton,
    _upstream: Upstream,
    envoy: Envoy,
    secret_file: std::path::PathBuf,
    client: DelegationBrokerClient<Channel>,
    /// `report-worker`'s token, a broker caller.
    caller: String,
    /// `other-worker`'s token, a broker caller `reports` does not allow.
    other_caller: String,
}

impl Jobs {
    /// With `bind_caller`, grants are bound to the caller that deferred them; Envoy asks Baton
    /// through `api`.
    async fn start(peer: Peer, bind_caller: bool, api: Api) -> Self {
        Self::start_with(peer, bind_caller, api, false).await
    }

    /// With `opaque_grants`, oidc-provider issues job grants opaque, and Baton introspects them
    /// (`deferred.introspection_endpoint`) at Defer and Redeem; `baton sts` keeps issuing JWT
    /// grants, which Redeem then introspects after its own checks.
    async fn start_with(peer: Peer, bind_caller: bool, api: Api, opaque_grants: bool) -> Self {
        let scratch = Scratch::new(
            BATON_BIN,
            &format!("deferred-{peer:?}{}", if opaque_grants { "-opaque" } else { "" }).to_lowercase(),
        );
        leaks::secret(ADMIN_SECRET);
        let secret_file = scratch.write("admin-secret", &format!("{ADMIN_SECRET}\n"));
        let audiences = [ORDERS, BILLING, JOBS, APP];
        // oidc-provider ends sessions by back-channel logout to Baton's admin listener, so its
        // issuer (its port) is chosen first and it starts once Baton listens; the others first.
        let backchannel = peer == Peer::OidcProvider && !opaque_grants;
        let (issuer, started) = if backchannel {
            (format!("http://127.0.0.1:{}", free_port()), None)
        } else {
            let options = PeerOptions {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                env: if opaque_grants {
                    vec![("OPAQUE_AUDIENCES", JOBS.to_owned())]
                } else {
                    Vec::new()
                },
                ..PeerOptions::default()
            };
            let started = TokenService::start_with(peer, &scratch, options).await;
            (started.issuer.clone(), Some(started))
        };
        let mut tail = String::new();
        if backchannel {
            tail = format!("backchannel_logout:\n  client_id: {APP_CLIENT_ID}\n  issuers: [{issuer}]\n  max_age: 2m\n");
        }
        if opaque_grants {
            // oidc-provider's RFC 7662 endpoint, or `baton sts`'s (which also introspects JWTs).
            let path = match peer {
                Peer::OidcProvider => "token/introspection",
                _ => "introspect",
            };
            tail = format!("  introspection_endpoint: {issuer}/{path}\n");
        }
        let extra = format!(
            r#"trusted_issuers:
  - issuer: {issuer}
    audiences: [frontend, {CALLER_AUDIENCE}, {JOBS}, "{APP}"]
    jwks_min_refetch: 1s
broker:
  callers: authenticated
  caller_audience: {CALLER_AUDIENCE}
revocation:
  remember: 2h
  admin_secret_file: {secret}
deferred:
  audience: {JOBS}
  grant_issuer: {issuer}
  max_age: 1h
  max_job_id_bytes: 32
  max_destinations: 2
  bind_caller: {bind_caller}
{tail}"#,
            secret = secret_file.display(),
        );
        // The standard destinations, and `reports`, whose policy lets only the report worker
        // act for a user there.
        let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {issuer}/token"));
        let body = format!(
            r#"token_service:
{token_service}
destinations:
  - name: orders
    hosts: ["orders.example"]
    audience: {ORDERS}
    scopes: [orders.read]
  - name: billing
    hosts: ["billing.example"]
    audience: {BILLING}
  - name: forbidden
    hosts: ["forbidden.example"]
    audience: {FORBIDDEN}
  - name: reports
    audience: {BILLING}
    policy:
      allowed_sources: [report-worker]
{extra}"#
        );
        let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
        let idp = match started {
            Some(started) => started,
            None => {
                let port = issuer.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
                let logout_uri = format!("http://127.0.0.1:{}/backchannel-logout", baton.admin);
                let idp = backchannel_peer(&scratch, port, &logout_uri, &audiences).await;
                assert_eq!(idp.issuer, issuer);
                // Baton tried the provider's JWKS before it was up: past `jwks_min_refetch`, the
                // first token fetches it again.
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                idp
            }
        };
        let upstream = Upstream::start().await;
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), upstream.port).await;
        let client = broker_client(baton.grpc).await;
        let caller = idp
            .mint_with(&[("sub", "report-worker"), ("aud", CALLER_AUDIENCE)])
            .await;
        let other_caller = idp
            .mint_with(&[("sub", "other-worker"), ("aud", CALLER_AUDIENCE)])
            .await;
        Self {
            scratch,
            idp,
            baton,
            _upstream: upstream,
            envoy,
            secret_file,
            client,
            caller,
            other_caller,
        }
    }

    /// A user's token (audience `frontend`) in session `sid`.
    async fn user(&self, sub: &str, sid: &str) -> String {
        // `baton sts` takes extra claims as JSON; the oidc-provider glue takes `sid` itself.
        let claims = format!(r#"{{"sid":"{sid}"}}"#);
        let session = match self.idp.peer {
            Peer::BatonSts => ("claims", claims.as_str()),
            _ => ("sid", sid),
        };
        self.idp
            .mint_with(&[("sub", sub), ("aud", "frontend"), ("scope", "orders.read"), session])
            .await
    }

    fn authorized<T>(caller: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer(caller).parse().expect("metadata"));
        request
    }

    async fn defer(
        &self,
        user: &str,
        job: &str,
        destinations: &[&str],
        max_age: u64,
    ) -> Result<DeferResponse, tonic::Status> {
        self.defer_as(&self.caller, user, job, destinations, max_age).await
    }

    async fn defer_as(
        &self,
        caller: &str,
        user: &str,
        job: &str,
        destinations: &[&str],
        max_age: u64,
    ) -> Result<DeferResponse, tonic::Status> {
        let request = Self::authorized(
            caller,
            DeferRequest {
                subject_token: user.to_owned(),
                job_id: job.to_owned(),
                destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
                max_age_seconds: max_age,
            },
        );
        remembered(self.client.clone().defer(request).await, |a| &a.grant)
    }

    async fn redeem(&self, grant: &str, destination: &str) -> Result<RedeemResponse, tonic::Status> {
        self.redeem_as(&self.caller, grant, destination).await
    }

    async fn redeem_as(&self, caller: &str, grant: &str, destination: &str) -> Result<RedeemResponse, tonic::Status> {
        let request = Self::authorized(
            caller,
            RedeemRequest {
                grant: grant.to_owned(),
                destination: destination.to_owned(),
            },
        );
        remembered(self.client.clone().redeem(request).await, |a| &a.access_token)
    }

    /// `baton revoke` with these selector flags; whether it succeeded.
    async fn revoke(&self, selector: &[&str]) -> bool {
        let output = tokio::process::Command::new(BATON_BIN)
            .arg("revoke")
            .arg("--admin")
            .arg(format!("http://127.0.0.1:{}", self.baton.admin))
            .arg("--secret-file")
            .arg(&self.secret_file)
            .args(selector)
            .output()
            .await
            .expect("run baton revoke");
        output.status.success()
    }

    /// `POST /revoke` with the admin secret; the status.
    async fn post_revoke(&self, body: &str) -> u16 {
        http()
            .post(format!("http://127.0.0.1:{}/revoke", self.baton.admin))
            .bearer_auth(ADMIN_SECRET)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST /revoke")
            .status()
            .as_u16()
    }

    /// Wait (up to 10 s) until Baton's audit log holds a record that `matches`.
    async fn audited(&self, what: &str, matches: impl Fn(&serde_json::Value) -> bool) {
        let audit = self.scratch.0.join("audit.log");
        wait_until(what, Duration::from_secs(10), || async {
            std::fs::read_to_string(&audit).unwrap_or_default().lines().any(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                matches(&record)
            })
        })
        .await;
    }

    async fn cache_entries(&self) -> f64 {
        metric(&self.baton.metrics().await, "baton_cache_entries").unwrap_or(0.0)
    }
}

/// A broker answer's message, its credential (`secret`) handed to the leak scan first, so that
/// nothing Baton emits may hold it.
fn remembered<T>(
    answer: Result<tonic::Response<T>, tonic::Status>,
    secret: impl Fn(&T) -> &str,
) -> Result<T, tonic::Status> {
    let answer = answer.map(tonic::Response::into_inner);
    if let Ok(a) = &answer {
        leaks::secret(secret(a));
    }
    answer
}

/// The refusal's reason code (a broker refusal's message starts with it) and gRPC code.
fn refused<T: std::fmt::Debug>(answer: Result<T, tonic::Status>) -> (tonic::Code, String) {
    let status = answer.expect_err("refused");
    let reason = status.message().split(':').next().unwrap_or_default().to_owned();
    (status.code(), reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_jobs_are_reauthorized_when_they_run() {
    let jobs = Jobs::start(Peer::OidcProvider, false, Api::ExtAuthz).await;
    let alice = jobs.user("alice", "s-alice").await;

    // Defer: a grant the token service issued, bound to the job, no longer-lived than asked.
    let before = jobs.cache_entries().await;
    let deferred = jobs
        .defer(&alice, "report-1", &["orders"], 600)
        .await
        .expect("deferred");
    let grant = jobs.idp.verify(&deferred.grant).await;
    assert_eq!(audiences(&grant), [JOBS]);
    assert_eq!(grant["sub"], "alice");
    let scope = grant["scope"].as_str().expect("scope");
    for value in [
        "baton:job:report-1",
        "baton:dest:orders",
        "baton:max_age:600",
        "baton:sid:s-alice",
    ] {
        assert!(scope.split(' ').any(|s| s == value), "{value} in {scope}");
    }
    let (iat, exp) = (grant["iat"].as_i64().expect("iat"), grant["exp"].as_i64().expect("exp"));
    assert!(exp - iat <= 600, "lives {}s", exp - iat);
    assert_eq!(deferred.expires_at, exp);
    assert_ne!(deferred.grant, alice);
    // Baton stores no user credential for the job: nothing was cached.
    assert_eq!(jobs.cache_entries().await, before, "Defer cached nothing");

    // Redeem for a live user: a token for the destination, for alice, audited with the job id.
    let redeemed = jobs.redeem(&deferred.grant, "orders").await.expect("redeemed");
    assert_eq!(redeemed.job_id, "report-1");
    let token = jobs.idp.verify(&redeemed.access_token).await;
    assert_eq!(audiences(&token), [ORDERS]);
    assert_eq!(token["sub"], "alice");
    assert_eq!(jobs.cache_entries().await, before, "Redeem cached nothing");
    jobs.audited("the Redeem audit record", |record| {
        record["job"] == "report-1" && record["destination"] == "orders" && record["decision"] == "delegate"
    })
    .await;

    // A destination the grant does not name.
    assert_eq!(
        refused(jobs.redeem(&deferred.grant, "billing").await),
        (tonic::Code::PermissionDenied, "destination_not_in_grant".into())
    );
    assert_eq!(
        refused(jobs.redeem(&deferred.grant, "nowhere").await),
        (tonic::Code::PermissionDenied, "destination_not_in_grant".into())
    );

    // The destination's policy runs at Defer and again at Redeem, for the caller asking then.
    let report = jobs
        .defer(&alice, "report-policy", &["reports"], 600)
        .await
        .expect("report-worker may act for alice at reports");
    assert_eq!(
        refused(
            jobs.defer_as(&jobs.other_caller, &alice, "report-other", &["reports"], 600)
                .await
        ),
        (tonic::Code::PermissionDenied, "source_not_allowed".into())
    );
    assert_eq!(
        refused(jobs.redeem_as(&jobs.other_caller, &report.grant, "reports").await),
        (tonic::Code::PermissionDenied, "source_not_allowed".into())
    );
    jobs.redeem(&report.grant, "reports")
        .await
        .expect("the report worker redeems");

    // A grant is usable by Redeem only: through Envoy, or to Exchange, it is refused.
    let reply = send(
        &jobs.envoy,
        "orders.example",
        "/orders/1",
        Some(&bearer(&deferred.grant)),
    )
    .await;
    assert_eq!((reply.status, reply.reason()), (401, "grant_as_subject_token"));
    let mut client = jobs.client.clone();
    let exchanged = broker_exchange(&mut client, Some(&jobs.caller), &deferred.grant, "orders", &[]).await;
    assert_eq!(
        refused(exchanged),
        (tonic::Code::Unauthenticated, "grant_as_subject_token".into())
    );
    // Nor can a grant be deferred again (to stretch its life).
    assert_eq!(
        refused(jobs.defer(&deferred.grant, "report-1b", &["orders"], 600).await),
        (tonic::Code::Unauthenticated, "grant_as_subject_token".into())
    );
    // The user's own token still goes through Envoy.
    let reply = send(&jobs.envoy, "orders.example", "/orders/1", Some(&bearer(&alice))).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    // A job revoked by its id (`baton revoke --job`) fails at Redeem; alice's other jobs run.
    let second = jobs
        .defer(&alice, "report-2", &["orders", "billing"], 600)
        .await
        .expect("deferred");
    let third = jobs
        .defer(&alice, "report-3", &["orders"], 600)
        .await
        .expect("deferred");
    assert_eq!(jobs.post_revoke(r#"{"job":"report 2"}"#).await, 400, "not a job id");
    assert!(jobs.revoke(&["--job", "report-2"]).await, "baton revoke --job");
    assert_eq!(
        refused(jobs.redeem(&second.grant, "billing").await),
        (tonic::Code::Unauthenticated, "job_revoked".into())
    );
    let metrics = jobs.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_revocations_total{event="operator",kind="job",outcome="ok"} 1"#),
        "{metrics}"
    );
    jobs.audited("the job's revocation audit record", |record| {
        record["api"] == "revocation" && record["kind"] == "job" && record["job"] == "report-2"
    })
    .await;
    assert_eq!(
        jobs.redeem(&third.grant, "orders")
            .await
            .expect("another job runs")
            .job_id,
        "report-3"
    );

    // A job whose user's session ended fails `subject_revoked`; another user's job runs. The
    // session ends at the identity provider (RP-initiated logout), which itself sends Baton the
    // back-channel logout token: no operator call.
    let bob = Session::sign_in(&jobs.idp, "bob", APP).await;
    let carol = Session::sign_in(&jobs.idp, "carol", APP).await;
    let bobs = jobs
        .defer(&bob.access_token, "export-bob", &["orders"], 600)
        .await
        .expect("deferred");
    let carols = jobs
        .defer(&carol.access_token, "export-carol", &["orders"], 600)
        .await
        .expect("deferred");
    let bound = jobs.idp.verify(&bobs.grant).await;
    let bound = bound["scope"].as_str().expect("scope");
    assert!(
        bound.split(' ').any(|v| v == format!("baton:sid:{}", bob.sid)),
        "the grant carries bob's session: {bound}"
    );
    jobs.redeem(&bobs.grant, "orders").await.expect("bob is live");
    let (bob_token, carol_sub) = (bob.access_token.clone(), carol.sub.clone());
    bob.end().await;
    assert_eq!(
        refused(jobs.redeem(&bobs.grant, "orders").await),
        (tonic::Code::Unauthenticated, "subject_revoked".into())
    );
    let metrics = jobs.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_backchannel_logouts_total{outcome="ok"} 1"#),
        "{metrics}"
    );
    jobs.redeem(&carols.grant, "orders").await.expect("carol is live");
    // A logged-out session cannot defer a new job either.
    assert_eq!(
        refused(jobs.defer(&bob_token, "export-bob-2", &["orders"], 600).await),
        (tonic::Code::Unauthenticated, "subject_revoked".into())
    );
    // By subject, too (`baton revoke --sub`).
    assert!(jobs.revoke(&["--sub", &carol_sub]).await);
    assert_eq!(
        refused(jobs.redeem(&carols.grant, "orders").await),
        (tonic::Code::Unauthenticated, "subject_revoked".into())
    );

    // An expired grant has its own reason.
    let short = jobs
        .defer(&alice, "report-short", &["orders"], 1)
        .await
        .expect("deferred");
    let claims = jobs.idp.verify(&short.grant).await;
    assert!(claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat") <= 1);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        refused(jobs.redeem(&short.grant, "orders").await),
        (tonic::Code::Unauthenticated, "grant_expired".into())
    );

    // Malformed requests: a clear refusal, nothing issued.
    let exchanges = jobs.idp.exchanges().await;
    let long_id = "j".repeat(33);
    for (job, destinations, max_age, reason) in [
        ("", &["orders"][..], 60, "job_request_invalid"),
        ("a b", &["orders"][..], 60, "job_request_invalid"),
        ("a/b", &["orders"][..], 60, "job_request_invalid"),
        ("job\u{e9}", &["orders"][..], 60, "job_request_invalid"),
        (&long_id, &["orders"][..], 60, "job_request_invalid"),
        ("j", &[][..], 60, "job_request_invalid"),
        ("j", &["orders", "orders"][..], 60, "job_request_invalid"),
        ("j", &["orders", "billing", "forbidden"][..], 60, "job_request_invalid"),
        ("j", &["orders"][..], 0, "job_request_invalid"),
        ("j", &["orders"][..], 3601, "job_request_invalid"),
        ("j", &["nowhere"][..], 60, "destination_not_configured"),
    ] {
        let (_, got) = refused(jobs.defer(&alice, job, destinations, max_age).await);
        assert_eq!(got, reason, "{job:?} {destinations:?} {max_age}");
    }
    let forged = forge_jwt(
        r#"{"alg":"ES256","typ":"at+jwt"}"#,
        &format!(
            r#"{{"iss":"{}","sub":"alice","aud":"{JOBS}","iat":{now},"exp":{exp},"scope":"baton:job:x baton:dest:orders baton:max_age:60"}}"#,
            jobs.idp.issuer,
            now = unix_now(),
            exp = unix_now() + 60
        ),
        "c2lnbmF0dXJl",
    );
    for (grant, destination, reason) in [
        ("", "orders", "job_request_invalid"),
        (deferred.grant.as_str(), "", "job_request_invalid"),
        ("not a token", "orders", "grant_invalid"),
        ("opaque-token", "orders", "grant_invalid"),
        (alice.as_str(), "orders", "grant_invalid"),
        (forged.as_str(), "orders", "grant_invalid"),
    ] {
        let (_, got) = refused(jobs.redeem(grant, destination).await);
        assert_eq!(got, reason, "{destination:?}");
    }
    // A user token minted with the job audience is no grant Baton asked for: no binding.
    let unbound = jobs
        .idp
        .mint_with(&[("sub", "alice"), ("aud", JOBS), ("scope", "orders.read")])
        .await;
    assert_eq!(refused(jobs.redeem(&unbound, "orders").await).1, "grant_invalid");
    assert_eq!(
        jobs.idp.exchanges().await,
        exchanges,
        "no refused request reached the token service"
    );

    // Without a caller's credential, nothing.
    let anonymous = jobs
        .client
        .clone()
        .redeem(tonic::Request::new(RedeemRequest {
            grant: deferred.grant.clone(),
            destination: "orders".into(),
        }))
        .await;
    assert_eq!(
        refused(anonymous),
        (tonic::Code::Unauthenticated, "caller_unauthenticated".into())
    );
}

/// The development token service (`baton sts`) issues job grants too: a job runs for a live user
/// and is refused once the user's session was revoked. Under `deferred.bind_caller`, only the
/// caller that deferred a job redeems it; through ext_proc, a grant is refused as a subject token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_sts_issues_job_grants_too() {
    let jobs = Jobs::start(Peer::BatonSts, true, Api::ExtProc).await;
    let alice = jobs.user("alice", "s-alice").await;
    let deferred = jobs.defer(&alice, "nightly", &["orders"], 120).await.expect("deferred");
    let grant = jobs.idp.verify(&deferred.grant).await;
    assert_eq!(audiences(&grant), [JOBS]);
    assert!(grant["exp"].as_i64().expect("exp") - grant["iat"].as_i64().expect("iat") <= 120);
    let bound = grant["scope"].as_str().expect("scope");
    assert!(bound.split(' ').any(|v| v == "baton:caller:report-worker"), "{bound}");
    assert_eq!(
        refused(jobs.redeem_as(&jobs.other_caller, &deferred.grant, "orders").await),
        (tonic::Code::PermissionDenied, "grant_caller_mismatch".into())
    );
    let redeemed = jobs.redeem(&deferred.grant, "orders").await.expect("redeemed");
    assert_eq!(audiences(&jobs.idp.verify(&redeemed.access_token).await), [ORDERS]);
    // What a Redeem costs (debug build, loopback, `baton sts`): reported, never asserted.
    let mut took = Vec::new();
    for _ in 0..30 {
        let started = std::time::Instant::now();
        jobs.redeem(&deferred.grant, "orders").await.expect("redeemed");
        took.push(started.elapsed());
    }
    took.sort();
    report::line(&format!(
        "deferred: 30 Redeems through the broker (each a verification and an uncached exchange with baton sts): median {:?}, max {:?}",
        took[15], took[29]
    ));
    // Through Envoy's ext_proc too, a grant is no subject token.
    let reply = send(
        &jobs.envoy,
        "orders.example",
        "/orders/1",
        Some(&bearer(&deferred.grant)),
    )
    .await;
    assert_eq!((reply.status, reply.reason()), (401, "grant_as_subject_token"));
    assert_eq!(jobs.post_revoke(r#"{"sid":"s-alice"}"#).await, 200);
    assert_eq!(
        refused(jobs.redeem(&deferred.grant, "orders").await),
        (tonic::Code::Unauthenticated, "subject_revoked".into())
    );
}

/// Introspection at Redeem (`deferred.introspection_endpoint`), against oidc-provider's own RFC 7662
/// endpoint: the provider issues job grants opaque (its introspection judges no JWT), Baton reads
/// and checks each grant from the provider's answer at Defer and Redeem, and a grant the provider
/// no longer honours (revoked there by RFC 7009, with no signal to Baton) is refused
/// `grant_inactive` while another job runs. When the endpoint does not answer, Redeem fails closed
/// with `grant_introspection_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_asks_the_token_service_whether_the_grant_is_live() {
    let jobs = Jobs::start_with(Peer::OidcProvider, false, Api::ExtAuthz, true).await;
    let alice = jobs.user("alice", "s-alice").await;
    let first = jobs
        .defer(&alice, "export-1", &["orders"], 600)
        .await
        .expect("deferred");
    let second = jobs
        .defer(&alice, "export-2", &["orders"], 600)
        .await
        .expect("deferred");
    assert!(
        first.grant.split('.').count() < 3,
        "the job grant is opaque (OPAQUE_AUDIENCES)"
    );
    assert!(first.expires_at > unix_now() as i64 && first.expires_at <= unix_now() as i64 + 601);
    let redeemed = jobs.redeem(&first.grant, "orders").await.expect("live");
    assert_eq!(redeemed.job_id, "export-1");
    let token = jobs.idp.verify(&redeemed.access_token).await;
    assert_eq!(
        (audiences(&token), token["sub"].as_str()),
        (vec![ORDERS.to_owned()], Some("alice"))
    );
    // The rules a JWT grant is held to hold for an introspected one too.
    assert_eq!(
        refused(jobs.redeem(&first.grant, "billing").await),
        (tonic::Code::PermissionDenied, "destination_not_in_grant".into())
    );

    // The provider stops honouring the first grant (RFC 7009 revocation by its client, Baton's):
    // Baton hears of it only by asking.
    let revoked = http()
        .post(format!("{}/token/revocation", jobs.idp.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", first.grant.as_str()), ("token_type_hint", "access_token")])
        .send()
        .await
        .expect("POST /token/revocation");
    assert_eq!(revoked.status().as_u16(), 200);
    let exchanges = jobs.idp.exchanges().await;
    assert_eq!(
        refused(jobs.redeem(&first.grant, "orders").await),
        (tonic::Code::Unauthenticated, "grant_inactive".into())
    );
    // An opaque value the provider never issued is no grant either.
    assert_eq!(
        refused(jobs.redeem("never-issued-by-the-provider", "orders").await),
        (tonic::Code::Unauthenticated, "grant_inactive".into())
    );
    assert_eq!(
        jobs.idp.exchanges().await,
        exchanges,
        "a refused grant reached no exchange"
    );
    jobs.redeem(&second.grant, "orders").await.expect("the other job runs");
    jobs.audited("the grant_inactive audit record", |record| {
        record["reason"] == "grant_inactive"
    })
    .await;

    // No answer (the provider frozen): fail closed once the token service's `timeout` (1s) passes.
    jobs.idp.signal("STOP");
    let started = std::time::Instant::now();
    let answer = jobs.redeem(&second.grant, "orders").await;
    let waited = started.elapsed();
    jobs.idp.signal("CONT");
    assert_eq!(
        refused(answer),
        (tonic::Code::Unavailable, "grant_introspection_failed".into())
    );
    report::line(&format!(
        "deferred: a Redeem whose introspection endpoint does not answer is refused after {waited:?} (token service timeout 1s)"
    ));
    jobs.redeem(&second.grant, "orders").await.expect("answered again");
}

/// A JWT grant is introspected too, after Redeem's own checks (`baton sts` introspects JWTs): the
/// job runs while the token service answers, and fails closed while it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_grant_is_introspected_at_redeem_too() {
    let jobs = Jobs::start_with(Peer::BatonSts, false, Api::ExtAuthz, true).await;
    let alice = jobs.user("alice", "s-alice").await;
    let deferred = jobs.defer(&alice, "nightly", &["orders"], 120).await.expect("deferred");
    assert_eq!(deferred.grant.split('.').count(), 3, "a JWT grant");
    jobs.redeem(&deferred.grant, "orders").await.expect("live");
    jobs.idp.signal("STOP");
    let answer = jobs.redeem(&deferred.grant, "orders").await;
    jobs.idp.signal("CONT");
    assert_eq!(
        refused(answer),
        (tonic::Code::Unavailable, "grant_introspection_failed".into()),
        "introspection comes before the exchange"
    );
    jobs.redeem(&deferred.grant, "orders").await.expect("answered again");
}
