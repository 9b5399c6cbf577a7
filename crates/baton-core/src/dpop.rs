//! DPoP (RFC 9449): the workload's proof-of-possession key, the proofs Baton signs with it (one per
//! exchange, one per outbound request to a `binding: dpop` destination), the checks on a token the
//! token service bound to it, and the `dpop:` section (the key file, what to do with a subject
//! token that is itself bound). It owns the key and never lets it out: no log, trace or audit line
//! holds the private key, a proof or a token (the key's public thumbprint at most).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::credentials::Stamp;
use crate::secret::Secret;
use baton_decide::reason::{Denial, Reason};
use baton_decide::settings::{Errors, duration};

/// The largest key file read (a P-256 PEM is about 250 bytes).
const MAX_KEY_BYTES: u64 = 16 * 1024;
/// The longest `DPoP-Nonce` kept; a longer one is ignored (RFC 9449 §8.1: NQCHARs, no bound given).
pub const MAX_NONCE_LEN: usize = 512;

/// `dpop.bound_subject_tokens`: a subject token that is itself DPoP-bound (a `cnf` claim) comes
/// without a proof Baton could check, since the proof was for the hop into the workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundSubjectTokens {
    /// Refused with `subject_token_bound`: a bound token in a workload's hands may have been taken.
    #[default]
    Refuse,
    /// Exchanged anyway; the token service judges it (RFC 8693 leaves that to it).
    Exchange,
}

/// `dpop:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// PEM private key (EC P-256, PKCS#8 or SEC1); absent: a key is generated at start, so every
    /// restart rotates it.
    pub key_file: Option<PathBuf>,
    /// How often the key file is checked for a change (default 1s).
    pub key_check_interval: Option<String>,
    pub bound_subject_tokens: BoundSubjectTokens,
}

/// `dpop:`, validated: the key is read (or generated) here, so a bad file is a configuration error.
#[derive(Debug)]
pub struct Settings {
    pub key_file: Option<PathBuf>,
    pub key_check_interval: Duration,
    pub bound_subject_tokens: BoundSubjectTokens,
    pub(crate) key: Arc<SigningKey>,
}

impl Raw {
    pub fn validate(self, errors: &mut Errors) -> Option<Settings> {
        let field = "dpop.key_check_interval";
        let key_check_interval = duration(
            self.key_check_interval.as_deref(),
            field,
            Duration::from_secs(1),
            errors,
        );
        if key_check_interval < Duration::from_millis(10) || key_check_interval > Duration::from_secs(3600) {
            errors.add(field, "must be from 10ms to 1h");
        }
        let key = match &self.key_file {
            Some(path) => match SigningKey::from_file(path) {
                Ok(key) => key,
                Err(why) => {
                    errors.add("dpop.key_file", why);
                    return None;
                }
            },
            None => match SigningKey::generate() {
                Ok(key) => key,
                Err(why) => {
                    errors.add("dpop", why);
                    return None;
                }
            },
        };
        Some(Settings {
            key_file: self.key_file,
            key_check_interval,
            bound_subject_tokens: self.bound_subject_tokens,
            key: Arc::new(key),
        })
    }
}

// === impl SigningKey ===

/// An EC P-256 key pair, with its public JWK and RFC 7638 thumbprint, and the proof header that
/// carries the JWK (encoded once).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    /// `base64url({"typ":"dpop+jwt","alg":"ES256","jwk":{...}})`.
    header: String,
    /// RFC 7638 thumbprint (SHA-256, base64url): what `cnf.jkt` of a bound token names.
    thumbprint: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key (nothing stores it: a restart rotates it).
    pub fn generate() -> Result<Self, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "cannot generate an EC P-256 key".to_owned())?;
        Ok(Self::of(pair))
    }

    /// Read a PEM private key (`PRIVATE KEY`, PKCS#8, or `EC PRIVATE KEY`, SEC1), EC P-256 only.
    /// The error names the file, never its content.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.len() > MAX_KEY_BYTES {
            return Err(format!("{} is larger than {MAX_KEY_BYTES} bytes", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(&text).map_err(|why| format!("{}: {why}", path.display()))
    }

    pub fn from_pem(text: &str) -> Result<Self, &'static str> {
        let der = pem_block(text).ok_or("not a PEM `PRIVATE KEY` or `EC PRIVATE KEY`")?;
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| "not an EC P-256 private key")?;
        Ok(Self::of(pair))
    }

    fn of(pair: EcdsaKeyPair) -> Self {
        // The public key is the uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace.
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jwk.as_bytes()));
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#));
        Self {
            pair,
            header,
            thumbprint,
        }
    }

    /// The RFC 7638 thumbprint of the public key.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A DPoP proof JWT (RFC 9449 §4.2) for one request: `htm`, `htu` (no query or fragment),
    /// `iat` (`now`), a fresh random `jti`, `ath` when it goes with an access token, `nonce` when
    /// the server gave one.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, Denial> {
        let jti: [u8; 16] = rand::random();
        let mut claims = serde_json::Map::with_capacity(6);
        claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        claims.insert("htm".into(), htm.into());
        claims.insert("htu".into(), htu.into());
        claims.insert("iat".into(), now.into());
        if let Some(ath) = ath {
            claims.insert("ath".into(), ath.into());
        }
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        let payload = serde_json::to_vec(&claims).map_err(|_| cannot_sign())?;
        let mut jws = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 96);
        jws.push_str(&self.header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), jws.as_bytes())
            .map_err(|_| cannot_sign())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}

fn cannot_sign() -> Denial {
    Denial::new(Reason::DpopProofUnavailable, "Baton could not sign a DPoP proof")
}

/// The DER of the first `PRIVATE KEY` or `EC PRIVATE KEY` block of a PEM text.
fn pem_block(text: &str) -> Option<Vec<u8>> {
    for label in ["PRIVATE KEY", "EC PRIVATE KEY"] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let rest = &text[start + begin.len()..];
            let body: String = rest[..rest.find(&end)?].split_whitespace().collect();
            return STANDARD.decode(body).ok();
        }
    }
    None
}

/// `ath` (RFC 9449 §4.2): base64url of the SHA-256 of the access token.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()))
}

/// The `htu` of a request: `scheme://authority/path`, without query or fragment (RFC 9449 §4.2).
pub fn htu(scheme: &str, authority: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut htu = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    htu.push_str(scheme);
    htu.push_str("://");
    htu.push_str(authority);
    htu.push_str(if path.is_empty() { "/" } else { path });
    htu
}

// === impl Keyring ===

/// The workload's current key: re-read when its file changes (checked at most once per
/// `key_check_interval`, on use), so a rotated file is picked up without a restart; a file that
/// cannot be read keeps the last good key (logged once per distinct error).
#[derive(Debug)]
pub struct Keyring {
    path: Option<PathBuf>,
    current: ArcSwap<SigningKey>,
    /// Unix ms of the next look at the file.
    next_check: AtomicU64,
    interval_ms: u64,
    stamp: std::sync::Mutex<(Option<Stamp>, Option<String>)>,
}

impl Keyring {
    pub fn new(settings: &Settings) -> Self {
        let stamp = settings.key_file.as_deref().and_then(Stamp::of_path);
        Self {
            path: settings.key_file.clone(),
            current: ArcSwap::new(settings.key.clone()),
            next_check: AtomicU64::new(crate::clock::unix_ms() + settings.key_check_interval.as_millis() as u64),
            interval_ms: settings.key_check_interval.as_millis() as u64,
            stamp: std::sync::Mutex::new((stamp, None)),
        }
    }

    /// The key to sign with now.
    pub fn current(&self) -> Arc<SigningKey> {
        if let Some(path) = &self.path {
            let now = crate::clock::unix_ms();
            let due = self.next_check.load(Ordering::Relaxed);
            if now >= due
                && self
                    .next_check
                    .compare_exchange(due, now + self.interval_ms, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.reload_if_changed(path);
            }
        }
        self.current.load_full()
    }

    /// Whether `other` reads its key from the same place (the same file, or both generated).
    pub fn same_source(&self, other: &Keyring) -> bool {
        self.path == other.path && self.interval_ms == other.interval_ms
    }

    fn reload_if_changed(&self, path: &std::path::Path) {
        let Ok(mut state) = self.stamp.lock() else { return };
        let stamp = Stamp::of_path(path);
        if stamp.is_some() && stamp == state.0 {
            return;
        }
        match SigningKey::from_file(path) {
            Ok(key) => {
                tracing::info!(file = %path.display(), jkt = key.thumbprint(), "DPoP key file changed: re-read");
                self.current.store(Arc::new(key));
                *state = (stamp, None);
            }
            Err(error) => {
                if state.1.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot re-read the DPoP key file: using the last good key");
                    state.1 = Some(error);
                }
            }
        }
    }
}

// === What the token service issued ===

/// A token issued for a `binding: dpop` destination must be bound to `key`: `token_type` `DPoP`,
/// and when it is a JWT, `cnf.jkt` equal to the key's thumbprint.
pub fn check_issued(
    token_type: &str,
    cnf: Option<&serde_json::Value>,
    is_jwt: bool,
    key: &SigningKey,
) -> Result<(), Denial> {
    if !token_type.eq_ignore_ascii_case("dpop") {
        return Err(Denial::new(
            Reason::IssuedTokenNotDpopBound,
            "the token service issued a token that is not DPoP-bound (token_type is not DPoP)",
        ));
    }
    if !is_jwt {
        return Ok(());
    }
    match cnf.and_then(|c| c.get("jkt")).and_then(serde_json::Value::as_str) {
        None => Err(Denial::new(
            Reason::IssuedTokenNotDpopBound,
            "the token service issued a JWT without cnf.jkt",
        )),
        Some(jkt) if jkt == key.thumbprint() => Ok(()),
        Some(_) => Err(Denial::new(
            Reason::IssuedTokenJktMismatch,
            "the issued token is bound to another key than Baton's",
        )),
    }
}

/// `Authorization: DPoP <token>` and its proof, for one outbound request.
#[derive(Debug)]
pub struct Bound {
    pub authorization: Secret,
    pub proof: Secret,
}

/// The proof and header for one request of `method` to `htu` with `token`.
pub fn bind(key: &SigningKey, token: &str, method: &str, htu: &str, now: u64) -> Result<Bound, Denial> {
    let proof = key.proof(method, htu, Some(&ath(token)), None, now)?;
    let mut authorization = String::with_capacity(5 + token.len());
    authorization.push_str("DPoP ");
    authorization.push_str(token);
    Ok(Bound {
        authorization: Secret::new(authorization),
        proof: Secret::new(proof),
    })
}

/// Whether a `DPoP-Nonce` value may be kept and sent back: 1..=MAX_NONCE_LEN NQCHARs
/// (%x21 / %x23-5B / %x5D-7E).
pub fn is_nonce(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NONCE_LEN
        && value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
    }

    #[test]
    fn a_proof_has_the_rfc_9449_shape_and_verifies() {
        let key = SigningKey::generate().expect("key");
        let proof = key
            .proof(
                "GET",
                "https://orders.example/a",
                Some(&ath("tok")),
                Some("n1"),
                1_700_000_000,
            )
            .expect("proof");
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header["jwk"].get("d").is_none(), "never the private part");
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://orders.example/a");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["ath"], ath("tok"));
        // The signature verifies with the public key in the header.
        let jwk = &header["jwk"];
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().expect("x")).expect("x"));
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().expect("y")).expect("y"));
        let public =
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, point);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("verifies");
        // Two proofs never share a jti.
        let other = key
            .proof("GET", "https://orders.example/a", None, None, 1)
            .expect("proof");
        assert_ne!(decode(other.split('.').nth(1).expect("claims"))["jti"], claims["jti"]);
    }

    /// RFC 7638 §3.1's example is RSA; the EC form is checked against an independent computation of
    /// the canonical JSON.
    #[test]
    fn the_thumbprint_is_rfc_7638() {
        let key = SigningKey::generate().expect("key");
        let header = decode(&key.header);
        let jwk = &header["jwk"];
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().expect("x"),
            jwk["y"].as_str().expect("y")
        );
        let want = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(key.thumbprint(), want);
        assert_eq!(key.thumbprint().len(), 43);
    }

    #[test]
    fn pem_keys_load_and_others_are_refused() {
        let rcgen_key = rcgen::KeyPair::generate().expect("p256");
        let key = SigningKey::from_pem(&rcgen_key.serialize_pem()).expect("pkcs8 p256");
        assert_eq!(key.thumbprint().len(), 43);
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
        if let Ok(rsa) = rsa {
            assert!(SigningKey::from_pem(&rsa.serialize_pem()).is_err(), "RSA is refused");
        }
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        assert!(SigningKey::from_pem(&p384.serialize_pem()).is_err(), "P-384 is refused");
        for junk in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(SigningKey::from_pem(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn htu_drops_query_and_fragment() {
        assert_eq!(
            htu("https", "orders.example", "/a/b?x=1#f"),
            "https://orders.example/a/b"
        );
        assert_eq!(htu("http", "orders:8080", ""), "http://orders:8080/");
    }

    #[test]
    fn issued_tokens_must_be_bound_to_this_key() {
        let key = SigningKey::generate().expect("key");
        let good = serde_json::json!({"jkt": key.thumbprint()});
        let other = serde_json::json!({"jkt": "abc"});
        assert!(check_issued("DPoP", Some(&good), true, &key).is_ok());
        assert!(
            check_issued("dpop", None, false, &key).is_ok(),
            "opaque: token_type suffices"
        );
        let reason = |r: Result<(), Denial>| r.expect_err("refused").reason;
        assert_eq!(
            reason(check_issued("Bearer", Some(&good), true, &key)),
            Reason::IssuedTokenNotDpopBound
        );
        assert_eq!(
            reason(check_issued("Bearer", None, false, &key)),
            Reason::IssuedTokenNotDpopBound
        );
        assert_eq!(
            reason(check_issued("DPoP", None, true, &key)),
            Reason::IssuedTokenNotDpopBound
        );
        assert_eq!(
            reason(check_issued("DPoP", Some(&serde_json::json!({"jkt": 1})), true, &key)),
            Reason::IssuedTokenNotDpopBound
        );
        assert_eq!(
            reason(check_issued("DPoP", Some(&other), true, &key)),
            Reason::IssuedTokenJktMismatch
        );
    }

    #[test]
    fn nonces_are_nqchars_and_bounded() {
        assert!(is_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        for bad in ["", "a b", "a\"b", "a\\b", "\r\n", &"x".repeat(MAX_NONCE_LEN + 1)] {
            assert!(!is_nonce(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_rotated_key_file_is_picked_up() {
        let dir = std::env::temp_dir().join(format!("baton-dpop-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key.pem");
        std::fs::write(&path, rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("write");
        let mut errors = Errors::default();
        let settings = Raw {
            key_file: Some(path.clone()),
            key_check_interval: Some("10ms".into()),
            ..Raw::default()
        }
        .validate(&mut errors)
        .expect("settings");
        let ring = Keyring::new(&settings);
        let first = ring.current().thumbprint().to_owned();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ring.current().thumbprint(), first, "unchanged file, same key");
        let next = dir.join("next.pem");
        std::fs::write(&next, rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("write");
        std::fs::rename(&next, &path).expect("swap");
        std::thread::sleep(Duration::from_millis(20));
        let second = ring.current().thumbprint().to_owned();
        assert_ne!(second, first, "rotated");
        std::fs::write(&path, "garbage").expect("spoil");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            ring.current().thumbprint(),
            second,
            "a bad file keeps the last good key"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_configuration_is_checked_all_at_once() {
        let yaml = |dpop: &str, destination: &str| {
            format!(
                "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth: {{ method: none }}\n{dpop}destinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n{destination}"
            )
        };
        let ok = crate::config::Config::from_yaml(&yaml("", "    binding: dpop\n    upstream_scheme: http\n"))
            .expect("valid");
        assert_eq!(
            ok.dpop.bound_subject_tokens,
            BoundSubjectTokens::Refuse,
            "fail closed by default"
        );
        assert_eq!(ok.destinations[0].binding, crate::destination::Binding::Dpop);
        let errors = crate::config::Config::from_yaml(&yaml(
            "dpop:\n  key_file: /nonexistent/dpop.pem\n  key_check_interval: 1ms\n  bound_subject_tokens: exchange\n",
            "    upstream_scheme: ftp\n",
        ))
        .expect_err("invalid")
        .0;
        let text = format!("{errors:?}");
        for field in [
            "dpop.key_file",
            "dpop.key_check_interval",
            "destinations[0].upstream_scheme",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert!(!text.contains("BEGIN"), "never the key");
    }
}
