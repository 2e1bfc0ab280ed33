//! What a component asks for: a custom section named [`SECTION`] holding
//! a TOML [`Grants`] table, anywhere in the component (the SDK's
//! `request_grants!` puts it in the tool's core module, which the component
//! carries as it is). `install` shows the request and grants nothing by
//! itself; `--grant-requested` grants exactly it, within the ceilings.

use super::Grants;
use crate::error::{Code, Failure};

/// The custom section's name.
pub const SECTION: &str = "clawos-grants";
/// Largest request section.
pub const MAX_SECTION: usize = 16 * 1024;

fn invalid(why: impl std::fmt::Display) -> Failure {
    Failure::new(
        Code::WasmInvalidComponent,
        format!("the component's {SECTION} section: {why}"),
    )
}

/// The grants `bytes` (a component) asks for: none without a section.
/// Malformed, too large or repeated sections are WASM_INVALID_COMPONENT.
pub fn requested(bytes: &[u8]) -> Result<Grants, Failure> {
    let mut found: Option<Grants> = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        // The component itself is validated by the compile: a binary that
        // does not parse here has no request to read.
        let Ok(payload) = payload else {
            break;
        };
        let wasmparser::Payload::CustomSection(section) = payload else {
            continue;
        };
        if section.name() != SECTION {
            continue;
        }
        if found.is_some() {
            return Err(invalid("there is more than one"));
        }
        let data = section.data();
        if data.len() > MAX_SECTION {
            return Err(invalid(format_args!(
                "{} bytes; the limit is {MAX_SECTION}",
                data.len()
            )));
        }
        let text = std::str::from_utf8(data).map_err(|_| invalid("not UTF-8"))?;
        let grants: Grants = toml::from_str(text).map_err(|e| {
            invalid(format_args!(
                "not a grants table ({})",
                e.message()
                    .chars()
                    .take(200)
                    .collect::<String>()
                    .escape_debug()
            ))
        })?;
        grants.validate().map_err(|f| invalid(f.message))?;
        found = Some(grants);
    }
    Ok(found.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module (the smallest: header only) with custom sections.
    fn module(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        for (name, data) in sections {
            let mut body = vec![name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(data);
            m.push(0);
            leb(&mut m, body.len());
            m.extend(body);
        }
        m
    }

    fn leb(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A component holding `core` as its one core module.
    fn component(core: &[u8]) -> Vec<u8> {
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        c.push(1);
        leb(&mut c, core.len());
        c.extend_from_slice(core);
        c
    }

    #[test]
    fn a_request_in_the_core_module_is_read() {
        let toml = b"names = [\"db.example.org\"]\nsecrets = [\"PGPASSWORD\"]\n\n[[net]]\ncidr = \"10.0.0.0/8\"\nports = [5432]\n";
        let bytes = component(&module(&[("producers", b"\0"), (SECTION, toml)]));
        let g = requested(&bytes).unwrap();
        assert_eq!(g.names, ["db.example.org"]);
        assert_eq!(g.net[0].ports, [5432]);
        assert!(g.secrets.contains("PGPASSWORD"));
    }

    #[test]
    fn no_section_asks_for_nothing() {
        assert_eq!(
            requested(&component(&module(&[]))).unwrap(),
            Grants::default()
        );
    }

    #[test]
    fn bad_sections_are_refused_by_name() {
        for (data, why) in [
            (&b"names = 3"[..], "not a grants table"),
            (&b"\xff"[..], "not UTF-8"),
            (&b"rootkit = true"[..], "not a grants table"),
            (&b"storage_bytes = 0"[..], "storage=0"),
            (&b"env = { \"A B\" = \"x\" }"[..], "not a valid grant"),
            (&b"names = [\"Evil Name\"]"[..], "not a valid grant"),
        ] {
            let e = requested(&component(&module(&[(SECTION, data)]))).unwrap_err();
            assert_eq!(e.code, Code::WasmInvalidComponent);
            assert!(e.message.contains(why), "{}", e.message);
        }
        let big = vec![b' '; MAX_SECTION + 1];
        let e = requested(&component(&module(&[(SECTION, &big)]))).unwrap_err();
        assert!(e.message.contains("the limit is"), "{}", e.message);
        let two = component(&module(&[(SECTION, b""), (SECTION, b"")]));
        assert!(
            requested(&two)
                .unwrap_err()
                .message
                .contains("more than one")
        );
    }
}
