//! A real user session at panva's oidc-provider, for the back-channel logout tests: the peer is
//! started with `BACKCHANNEL_LOGOUT_URI` (`backchannel_peer`), a user signs in to its client
//! `test-app` through the library's own login and consent pages (authorization code with PKCE, a
//! cookie jar of our own), and the session ends by RP-initiated logout (`/session/end` and its
//! confirm form), whereupon the library itself builds, signs and POSTs the logout token to Baton.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use url::Url;

use crate::leaks;
use crate::scratch::Scratch;
use crate::token_service::{Peer, PeerOptions, TokenService};
use crate::tokens::jwt_claims;

/// The client users sign in to (the peer's `APP_CLIENT_ID`): the logout token's `aud`.
pub const APP_CLIENT_ID: &str = "test-app";
const APP_CLIENT_SECRET: &str = "test-app-secret";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";
const POST_LOGOUT_REDIRECT_URI: &str = "http://127.0.0.1/logged-out";

/// oidc-provider with back-channel logout to `logout_uri`, on `port` (so its issuer can be
/// configured before it starts), issuing for `audiences` (a sign-in's `resource` among them).
pub async fn backchannel_peer(scratch: &Scratch, port: u16, logout_uri: &str, audiences: &[&str]) -> TokenService {
    leaks::secret(APP_CLIENT_SECRET);
    TokenService::start_with(
        Peer::OidcProvider,
        scratch,
        PeerOptions {
            port: Some(port),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![
                ("BACKCHANNEL_LOGOUT_URI", logout_uri.to_owned()),
                ("APP_CLIENT_ID", APP_CLIENT_ID.to_owned()),
                ("APP_CLIENT_SECRET", APP_CLIENT_SECRET.to_owned()),
            ],
            ..PeerOptions::default()
        },
    )
    .await
}

/// Cookies by name; enough for one provider on one host.
#[derive(Debug, Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let Some((name, value)) = text.split(';').next().and_then(|pair| pair.split_once('=')) else {
                continue;
            };
            let expired = text.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A signed-in user: the tokens the app got, and the browser's cookies.
#[derive(Debug)]
pub struct Session {
    /// A JWT access token for the sign-in's `resource`, with `sub` and `sid`.
    pub access_token: String,
    pub id_token: String,
    pub sub: String,
    pub sid: String,
    issuer: Url,
    jar: Jar,
    http: reqwest::Client,
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

impl Session {
    /// Sign `login` in to `test-app` at `provider`, asking for an access token for `resource`.
    pub async fn sign_in(provider: &TokenService, login: &str, resource: &str) -> Self {
        let issuer = Url::parse(&format!("{}/", provider.issuer)).expect("issuer");
        let http = browser();
        let mut jar = Jar::default();
        let mut verifier_bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut verifier_bytes).expect("random");
        let verifier = URL_SAFE_NO_PAD.encode(verifier_bytes);
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let mut next = issuer.join("auth").expect("auth url");
        next.query_pairs_mut()
            .append_pair("client_id", APP_CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("scope", "openid")
            .append_pair("resource", resource)
            .append_pair("state", "baton-test")
            .append_pair("nonce", "baton-test-nonce")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        // Follow the redirects by hand, answering the login and consent pages, until the
        // provider sends the browser back to the app with a code.
        let mut code = None;
        for _ in 0..16 {
            let response = http
                .get(next.clone())
                .header("cookie", jar.header())
                .send()
                .await
                .expect("GET");
            jar.take(&response);
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let page = response.text().await.unwrap_or_default();
            let target = match (status, location) {
                (300..=399, Some(location)) => next.join(&location).expect("location"),
                (200, None) => {
                    // A login or consent page: submit it as a user would.
                    let prompt = if page.contains(r#"name="prompt" value="login""#) {
                        vec![("prompt", "login"), ("login", login), ("password", "any")]
                    } else if page.contains(r#"name="prompt" value="consent""#) {
                        vec![("prompt", "consent")]
                    } else {
                        panic!("an interaction page that is neither login nor consent: {page:.400}");
                    };
                    let response = http
                        .post(next.clone())
                        .header("cookie", jar.header())
                        .form(&prompt)
                        .send()
                        .await
                        .expect("POST interaction");
                    jar.take(&response);
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .unwrap_or_else(|| panic!("the interaction answered {} without a redirect", response.status()))
                        .to_owned();
                    next.join(&location).expect("location")
                }
                (status, _) => panic!("sign-in: {next} answered {status}: {page:.400}"),
            };
            if target.as_str().starts_with(REDIRECT_URI) {
                let found = target
                    .query_pairs()
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned());
                code = Some(found.unwrap_or_else(|| panic!("the provider sent back no code: {target}")));
                break;
            }
            next = target;
        }
        let code = code.expect("the sign-in ended with a code within 16 steps");
        let response = http
            .post(issuer.join("token").expect("token url"))
            .basic_auth(APP_CLIENT_ID, Some(APP_CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("token body")).expect("token json");
        assert!(status.is_success(), "code redemption: {status} {body}");
        let text = |k: &str| {
            body[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in the token answer"))
                .to_owned()
        };
        let (access_token, id_token) = (text("access_token"), text("id_token"));
        leaks::secret(&access_token);
        leaks::secret(&id_token);
        let id = jwt_claims(&id_token).expect("the ID token is a JWT");
        let access = jwt_claims(&access_token).expect("the access token is a JWT (resource indicator)");
        let sid = id["sid"]
            .as_str()
            .expect("the ID token names its session (sid)")
            .to_owned();
        assert_eq!(
            access["sid"].as_str(),
            Some(sid.as_str()),
            "the access token names the session"
        );
        Self {
            sub: id["sub"].as_str().expect("sub").to_owned(),
            sid,
            access_token,
            id_token,
            issuer,
            jar,
            http,
        }
    }

    /// End the session (RP-initiated logout, confirmed): returns once the provider has sent the
    /// back-channel logout tokens (the library awaits each delivery before it answers).
    pub async fn end(mut self) {
        let mut start = self.issuer.join("session/end").expect("end_session url");
        start
            .query_pairs_mut()
            .append_pair("id_token_hint", &self.id_token)
            .append_pair("post_logout_redirect_uri", POST_LOGOUT_REDIRECT_URI);
        let response = self
            .http
            .get(start.clone())
            .header("cookie", self.jar.header())
            .send()
            .await
            .expect("GET /session/end");
        self.jar.take(&response);
        let status = response.status();
        let page = response.text().await.expect("logout page");
        assert_eq!(status.as_u16(), 200, "the logout page: {page:.400}");
        let between = |start: &str| {
            page.split_once(start)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(value, _)| value.replace("&amp;", "&"))
                .unwrap_or_else(|| panic!("no {start} in the logout page: {page:.400}"))
        };
        let (action, xsrf) = (between(r#"action=""#), between(r#"name="xsrf" value=""#));
        let response = self
            .http
            .post(start.join(&action).expect("confirm url"))
            .header("cookie", self.jar.header())
            .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
            .send()
            .await
            .expect("POST the logout confirmation");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            status == 303 && location.starts_with(POST_LOGOUT_REDIRECT_URI),
            "the logout was not confirmed: {status} {location}"
        );
    }
}
