//! Channel and body signatures: lowercase hex of HMAC-H(key, input), H = SHA-1 (default) or
//! SHA-256, as the Bitrix `pull` module computes them (docs/protocol.md#channels-and-signatures).
//!
//! Invariant: signatures are only ever compared in constant time (docs/protocol.md#channels-and-signatures), and nothing here logs.

use hmac::{Hmac, KeyInit, Mac};

/// The hash behind the HMAC; must equal the portal's `signature_algo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
}

impl Algo {
    pub fn parse(s: &str) -> Option<Algo> {
        match s {
            "sha1" => Some(Algo::Sha1),
            "sha256" => Some(Algo::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
        }
    }

    /// Length of the lowercase hex form.
    pub fn hex_len(self) -> usize {
        self.digest_len() * 2
    }
}

/// Signs and verifies with one key; cheap to clone (the key is short).
#[derive(Clone)]
pub struct Signer {
    algo: Algo,
    key: Vec<u8>,
}

impl Signer {
    pub fn new(algo: Algo, key: &[u8]) -> Signer {
        Signer {
            algo,
            key: key.to_vec(),
        }
    }

    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// Raw digest bytes of HMAC(key, data).
    pub fn sign_raw(&self, data: &[u8]) -> Vec<u8> {
        match self.algo {
            Algo::Sha1 => {
                let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&self.key)
                    .expect("HMAC accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Algo::Sha256 => {
                let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key)
                    .expect("HMAC accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Lowercase hex of HMAC(key, data): the wire form of a signature.
    pub fn sign_hex(&self, data: &[u8]) -> String {
        let raw = self.sign_raw(data);
        let mut s = String::with_capacity(raw.len() * 2);
        for b in raw {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// True when `sig_hex` is exactly the lowercase hex signature of `data`.
    /// The comparison does not stop at the first differing byte.
    pub fn verify_hex(&self, data: &[u8], sig_hex: &[u8]) -> bool {
        if sig_hex.len() != self.algo.hex_len() {
            return false;
        }
        let expected = self.sign_hex(data);
        constant_time_eq(expected.as_bytes(), sig_hex)
    }

    /// True when `sig` is the raw digest of `data` (v4 `Receiver.signature`).
    pub fn verify_raw(&self, data: &[u8], sig: &[u8]) -> bool {
        if sig.len() != self.algo.digest_len() {
            return false;
        }
        constant_time_eq(&self.sign_raw(data), sig)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Compares two equal-length slices touching every byte; unequal lengths are simply unequal
/// (lengths are public: they follow from the algorithm).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Signer {
        Signer::new(Algo::Sha1, b"secret")
    }

    #[test]
    fn protocol_vectors() {
        let s = secret();
        let cases: [(&str, &str); 5] = [
            (
                "098f6bcd4621d373cade4e832627b4f6",
                "bf39ebcf581317bc897fbb8adf6dca73cb6076d0",
            ),
            (
                "098f6bcd4621d373cade4e832627b4f6:4c9184f37cff01bcdc32dc486ec36961",
                "e9d67434a2735d6a4865b3e64b514f7e648008d7",
            ),
            (
                "public:4c9184f37cff01bcdc32dc486ec36961",
                "59a5001be5603756b5e23b55b51ebe63ce91b661",
            ),
            (
                "ad0234829205b9033196ba818f7a872b",
                "5d745385604d8fa4ced3152da59da68769780d05",
            ),
            ("{\"a\":1}", "f8446672f033e4b2beafc5ca3a71eafcd2cafb6e"),
        ];
        for (input, sig) in cases {
            assert_eq!(s.sign_hex(input.as_bytes()), sig, "{input}");
            assert!(s.verify_hex(input.as_bytes(), sig.as_bytes()));
        }
    }

    #[test]
    fn rfc2202_sha1() {
        let s = Signer::new(Algo::Sha1, b"Jefe");
        assert_eq!(
            s.sign_hex(b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn rfc4231_sha256() {
        let s = Signer::new(Algo::Sha256, b"Jefe");
        let sig = s.sign_hex(b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(sig.len(), Algo::Sha256.hex_len());
    }

    #[test]
    fn rejects_wrong_case_length_and_value() {
        let s = secret();
        let id = b"098f6bcd4621d373cade4e832627b4f6";
        assert!(!s.verify_hex(id, b"BF39EBCF581317BC897FBB8ADF6DCA73CB6076D0"));
        assert!(!s.verify_hex(id, b"bf39ebcf581317bc897fbb8adf6dca73cb6076d"));
        assert!(!s.verify_hex(id, b"bf39ebcf581317bc897fbb8adf6dca73cb6076d1"));
        let raw = s.sign_raw(b"public:4c9184f37cff01bcdc32dc486ec36961");
        assert!(s.verify_raw(b"public:4c9184f37cff01bcdc32dc486ec36961", &raw));
        assert!(!s.verify_raw(b"public:4c9184f37cff01bcdc32dc486ec36961", &raw[1..]));
    }
}
