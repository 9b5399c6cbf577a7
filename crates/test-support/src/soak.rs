//! The soak (`tests/soak.rs`, `benches/soak.rs`): the real Envoy, Baton as shipped and `baton sts`
//! issuing short-lived tokens, at a fixed rate (`open_loop`) over many users and two destinations,
//! so every token expires and is refreshed ahead many times. Every answer is judged
//! (`check::Delegation`) and each distinct upstream token verified; nothing here asserts, the
//! caller judges the `SoakReport`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::check::Delegation;
use crate::envoy::Envoy;
use crate::open_loop::{load_average, metric_sum, mib, open_loop, summarize, us};
use crate::{
    BILLING, Baton, ORDERS, Peer, PeerOptions, Scratch, TokenService, Upstream, audiences, basic_auth_to, bearer, http,
    leaks, rss_kib,
};

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct SoakPlan {
    /// The `baton` binary under test (`env!("CARGO_BIN_EXE_baton")`).
    pub baton: &'static str,
    pub duration: Duration,
    /// Requests per second through Envoy.
    pub rate: f64,
    pub users: usize,
    /// `baton sts` `token_lifetime` (what it answers in `expires_in`).
    pub token_lifetime: &'static str,
    /// Baton's `cache.expiry_margin`.
    pub expiry_margin: &'static str,
    /// From the start: requests due before this are warm-up (each key's first exchange).
    pub warmup: Duration,
    /// How often Baton's RSS is read.
    pub rss_every: Duration,
}

/// What a soak saw.
#[derive(Debug)]
pub struct SoakReport {
    pub plan: SoakPlan,
    pub keys: usize,
    pub sent: usize,
    /// Answered 200 with an upstream token for the right audience and user.
    pub right: usize,
    /// Answered 200 with a token for another audience or user, or one that does not verify.
    pub wrong: usize,
    /// Not answered 200 (a denial, an error, a timeout).
    pub failed: usize,
    /// Distinct upstream tokens seen (each verified against the token service's JWKS).
    pub distinct_tokens: usize,
    /// Check requests that waited on an exchange (cache `miss` + `coalesced`), in warm-up and after.
    pub waited_in_warmup: u64,
    pub waited_after_warmup: u64,
    /// Exchanges Baton made (its `baton_exchanges_total`), and the token service counted, after warm-up.
    pub exchanges_after_warmup: u64,
    pub sts_exchanges_total: u64,
    /// Baton's RSS, sampled every `rss_every` from the end of warm-up on.
    pub rss: Vec<u64>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub load_before: String,
    pub load_after: String,
}

impl SoakReport {
    /// Exchanges per key the cache needs at least (one per token stay) and at most (one per half
    /// stay, when refresh ahead starts at half), over the measured time.
    pub fn expected_exchanges(&self) -> (u64, u64) {
        let lifetime = humantime::parse_duration(self.plan.token_lifetime).expect("lifetime");
        let margin = humantime::parse_duration(self.plan.expiry_margin).expect("margin");
        let stay = lifetime.saturating_sub(margin).as_secs_f64();
        let measured = self.plan.duration.saturating_sub(self.plan.warmup).as_secs_f64();
        let keys = self.keys as f64;
        // Refresh ahead starts within a second of half the stay (whole seconds), so a key refreshes
        // every (stay / 2 .. stay / 2 + 1) s, never less often than once per stay.
        let low = (keys * measured / (stay / 2.0 + 1.0)).floor() as u64;
        let high = (keys * measured / (stay / 2.0 - 1.0).max(1.0)).ceil() as u64;
        (low, high)
    }

    pub fn rss_first_last_max(&self) -> (u64, u64, u64) {
        let first = self.rss.first().copied().unwrap_or(0);
        let last = self.rss.last().copied().unwrap_or(0);
        let max = self.rss.iter().copied().max().unwrap_or(0);
        (first, last, max)
    }

    /// The report, for the reader of the run (the soak test and the soak benchmark).
    #[allow(clippy::print_stdout, reason = "a soak reports on stdout")]
    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }

    /// The report's lines (the soak test hands them to `report::line`, so a normal run shows them).
    pub fn lines(&self) -> Vec<String> {
        let (first, last, max) = self.rss_first_last_max();
        let (low, high) = self.expected_exchanges();
        vec![
            format!(
                "soak: {:?} at {:.0} req/s through Envoy, {} users x 2 destinations = {} keys, token lifetime {} (expiry margin {}), warm-up {:?}; load average before {} / after {}",
                self.plan.duration,
                self.plan.rate,
                self.plan.users,
                self.keys,
                self.plan.token_lifetime,
                self.plan.expiry_margin,
                self.plan.warmup,
                self.load_before,
                self.load_after
            ),
            format!(
                "requests: {} sent, {} right, {} wrong, {} failed; {} distinct upstream tokens, each verified",
                self.sent, self.right, self.wrong, self.failed, self.distinct_tokens
            ),
            format!(
                "waited on an exchange (cache miss + coalesced): {} in warm-up, {} after",
                self.waited_in_warmup, self.waited_after_warmup
            ),
            format!(
                "exchanges after warm-up: {} (expected {low}..{high} from refresh ahead); the token service counted {} in all",
                self.exchanges_after_warmup, self.sts_exchanges_total
            ),
            format!(
                "latency from due time: p50 {} p99 {} max {}",
                us(self.p50),
                us(self.p99),
                us(self.max)
            ),
            format!(
                "Baton RSS ({} samples every {:?}): first {} last {} max {}",
                self.rss.len(),
                self.plan.rss_every,
                mib(first),
                mib(last),
                mib(max)
            ),
        ]
    }
}

const DESTINATIONS: [(&str, &str); 2] = [("orders.example", ORDERS), ("api.billing.example", BILLING)];

/// The real Envoy, Baton (as shipped: warnings only, metrics on) and `baton sts` issuing tokens of
/// `plan.token_lifetime`; `plan.users` users x 2 destinations, requested round robin at `plan.rate`.
/// Every upstream token is checked for its audience and user, and each distinct one verified.
pub async fn soak(plan: SoakPlan) -> SoakReport {
    let scratch = Scratch::new(plan.baton, "soak");
    let service = TokenService::start_with(
        Peer::BatonSts,
        &scratch,
        PeerOptions {
            lifetime: Some(plan.token_lifetime),
            ..Default::default()
        },
    )
    .await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let body = format!(
        r#"token_service:
{token_service}
cache:
  max_entries: 10000
  expiry_margin: {}
destinations:
  - name: orders
    hosts: ["orders.example"]
    audience: {ORDERS}
    scopes: [orders.read]
  - name: billing
    hosts: ["*.billing.example"]
    audience: {BILLING}
"#,
        plan.expiry_margin
    );
    let baton = Baton::start_raw(&scratch, &body, "warn").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;

    let mut users = Vec::with_capacity(plan.users);
    for u in 0..plan.users {
        let sub = format!("soak-user-{u}");
        let token = service.mint(&sub, "orders.read").await;
        users.push((sub, bearer(&token)));
    }
    let users = Arc::new(users);
    let keys = users.len() * DESTINATIONS.len();
    let count = (plan.rate * plan.duration.as_secs_f64()) as u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let url = envoy.url("/soak");
    // Each answer's verdict, and the distinct upstream tokens (verified after the run).
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, (String, String)>>> = Arc::default();
    let verdicts: Arc<std::sync::Mutex<Vec<Verdict>>> = Arc::default();

    let load_before = load_average();
    let rss = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let sampler = {
        let (rss, pid, every, warmup) = (rss.clone(), baton.pid(), plan.rss_every, plan.warmup);
        let end = started + plan.duration;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            while Instant::now() < end {
                rss.lock().unwrap_or_else(|e| e.into_inner()).push(rss_kib(pid) * 1024);
                tokio::time::sleep(every).await;
            }
            rss.lock().unwrap_or_else(|e| e.into_inner()).push(rss_kib(pid) * 1024);
        })
    };
    let at_warmup = {
        let (admin, warmup) = (baton.admin, plan.warmup);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            scrape(admin).await
        })
    };
    let samples = {
        let (users, seen, verdicts) = (users.clone(), seen.clone(), verdicts.clone());
        open_loop(plan.rate, count, move |i| {
            let (client, url, users, seen, verdicts) = (
                client.clone(),
                url.clone(),
                users.clone(),
                seen.clone(),
                verdicts.clone(),
            );
            async move {
                let i = i as usize;
                let (sub, authorization) = &users[(i / DESTINATIONS.len()) % users.len()];
                let (host, audience) = DESTINATIONS[i % DESTINATIONS.len()];
                let verdict = one_soak_request(&client, &url, host, authorization, sub, audience, &seen).await;
                verdicts.lock().unwrap_or_else(|e| e.into_inner()).push(verdict);
                verdict == Verdict::Right
            }
        })
        .await
    };
    let _ = sampler.await;
    let warm = at_warmup.await.expect("warm-up scrape");
    let end = scrape(baton.admin).await;
    let load_after = load_average();

    let waited = |m: &str| {
        (metric_sum(m, "baton_cache_requests_total", &["result=\"miss\""])
            + metric_sum(m, "baton_cache_requests_total", &["result=\"coalesced\""])) as u64
    };
    let exchanges = |m: &str| metric_sum(m, "baton_exchanges_total", &[]) as u64;

    // Verify every distinct upstream token once against the token service's keys: signature and
    // issuer (most have expired by now, so not their expiry: each was checked for it when served).
    let distinct: Vec<(String, (String, String))> = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(t, v)| (t.clone(), v.clone()))
        .collect();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(
        &http()
            .get(&service.jwks_uri)
            .send()
            .await
            .expect("jwks")
            .bytes()
            .await
            .expect("jwks body"),
    )
    .expect("jwks json");
    let mut unverified = 0;
    for (token, (sub, audience)) in &distinct {
        let verified = jsonwebtoken::decode_header(token).ok().and_then(|header| {
            let jwk = match &header.kid {
                Some(kid) => jwks.find(kid)?,
                None => jwks.keys.first()?,
            };
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).ok()?;
            let mut validation = jsonwebtoken::Validation::new(header.alg);
            validation.validate_aud = false;
            validation.validate_exp = false;
            validation.required_spec_claims.clear();
            validation.set_issuer(&[&service.issuer]);
            jsonwebtoken::decode::<Value>(token, &key, &validation).ok()
        });
        match verified {
            Some(t) if t.claims["sub"] == sub.as_str() && audiences(&t.claims).iter().any(|a| a == audience) => {}
            _ => unverified += 1,
        }
    }
    let verdicts = verdicts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let summary = summarize(&samples, plan.warmup);
    let report = SoakReport {
        keys,
        sent: verdicts.len(),
        right: verdicts.iter().filter(|v| **v == Verdict::Right).count(),
        wrong: verdicts.iter().filter(|v| **v == Verdict::Wrong).count() + unverified,
        failed: verdicts.iter().filter(|v| **v == Verdict::Failed).count(),
        distinct_tokens: distinct.len(),
        waited_in_warmup: waited(&warm),
        waited_after_warmup: waited(&end) - waited(&warm),
        exchanges_after_warmup: exchanges(&end) - exchanges(&warm),
        sts_exchanges_total: service.exchanges().await,
        rss: rss.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        p50: summary.p50,
        p99: summary.p99,
        max: summary.max,
        load_before,
        load_after,
        plan,
    };
    drop(envoy);
    drop(baton);
    report
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Right,
    Wrong,
    Failed,
}

async fn one_soak_request(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    authorization: &str,
    sub: &str,
    audience: &str,
    seen: &std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
) -> Verdict {
    let Ok(response) = client
        .get(url)
        .header("host", host)
        .header("authorization", authorization)
        .send()
        .await
    else {
        return Verdict::Failed;
    };
    if response.status() != 200 {
        return Verdict::Failed;
    }
    let Ok(bytes) = response.bytes().await else {
        return Verdict::Failed;
    };
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return Verdict::Failed;
    };
    let delegation = Delegation {
        user_token: authorization.strip_prefix("Bearer ").unwrap_or(authorization),
        sub,
        aud: audience,
        issuer: None,
    };
    let Ok(token) = delegation.check(&body) else {
        return Verdict::Wrong;
    };
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains_key(token) {
        leaks::secret(token);
        seen.insert(token.to_owned(), (sub.to_owned(), audience.to_owned()));
    }
    Verdict::Right
}

async fn scrape(admin: u16) -> String {
    http()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics body")
}
