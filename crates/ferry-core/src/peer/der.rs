//! Just enough DER to read the DNS names out of a certificate's subjectAltName.
//!
//! rustls has already verified the certificate chain when we look; this only needs the name the
//! CA put there. Malformed input yields `None`, never a panic.

/// One TLV: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT in TBSCertificate
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const DNS_NAME: u8 = 0x82; // GeneralName [2] IMPLICIT IA5String
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17

/// The dNSName entries of the certificate's subjectAltName extension.
pub(crate) fn dns_names(cert: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = tlv(cert)? else {
        return None;
    };
    while !tbs.is_empty() {
        let (tag, content, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut exts, _) = tlv(content)? else {
            return None;
        };
        while !exts.is_empty() {
            let (SEQUENCE, ext, rest) = tlv(exts)? else {
                return None;
            };
            exts = rest;
            let (OID, oid, mut ext) = tlv(ext)? else {
                return None;
            };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            // Skip the optional `critical` BOOLEAN, then the OCTET STRING wrapping the value.
            loop {
                let (tag, value, rest) = tlv(ext)?;
                ext = rest;
                if tag == OCTET_STRING {
                    return san_dns(value);
                }
            }
        }
    }
    Some(Vec::new())
}

fn san_dns(value: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, mut names, _) = tlv(value)? else {
        return None;
    };
    let mut out = Vec::new();
    while !names.is_empty() {
        let (tag, name, rest) = tlv(names)?;
        names = rest;
        if tag == DNS_NAME {
            out.push(String::from_utf8(name.to_vec()).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dns_names_and_survives_garbage() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["host-a".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.77.0.2".parse().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        assert_eq!(dns_names(&der), Some(vec!["host-a".to_string()]));
        for cut in 0..der.len() {
            let _ = dns_names(&der[..cut]);
        }
        let mut flipped = der;
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = dns_names(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
