//! `data:` URIs (RFC 2397), decoded: the one decoder, for file inputs given
//! as `data:` URIs ([`super::Fetcher`]) and for the files of an output that
//! `cogd predict` saves (`run_once`). Encoding is elsewhere, where each
//! encoder writes straight into its output (`files::outputs`).

use base64::Engine;

/// A decoded `data:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUri {
    /// The media type with its parameters, as written (`text/plain;charset=utf-8`);
    /// empty when the URI names none.
    pub media_type: String,
    /// The bytes it carries.
    pub bytes: Vec<u8>,
}

impl DataUri {
    /// Decodes `data:[<media type>][;base64],<data>`: base64 data (padded,
    /// whitespace around it ignored), or percent-encoded text.
    pub fn decode(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("data:")
            .ok_or("a data: URI must start with data:")?;
        let (meta, data) = rest
            .split_once(',')
            .ok_or("a data: URI must have a comma before its data")?;
        let (media_type, bytes) = match meta.strip_suffix(";base64") {
            Some(media_type) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| format!("the data: URI is not valid base64: {e}"))?;
                (media_type, bytes)
            }
            None => (meta, percent_encoding::percent_decode_str(data).collect()),
        };
        Ok(Self {
            media_type: media_type.to_string(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(uri: &str) -> Result<(String, Vec<u8>), String> {
        DataUri::decode(uri).map(|d| (d.media_type, d.bytes))
    }

    #[test]
    fn base64_data_decodes_with_its_media_type() {
        assert_eq!(
            decode("data:text/plain;base64,aGVsbG8="),
            Ok(("text/plain".into(), b"hello".to_vec()))
        );
        assert_eq!(
            decode("data:image/png;name=a.png;base64, AAE=\n"),
            Ok(("image/png;name=a.png".into(), vec![0, 1])),
            "parameters kept, whitespace around the data ignored"
        );
        assert_eq!(decode("data:;base64,"), Ok((String::new(), vec![])));
    }

    #[test]
    fn plain_data_is_percent_decoded() {
        assert_eq!(decode("data:,a%20b"), Ok((String::new(), b"a b".to_vec())));
        assert_eq!(
            decode("data:text/csv,x,y%0A1,2"),
            Ok(("text/csv".into(), b"x,y\n1,2".to_vec())),
            "only the first comma ends the header"
        );
        assert_eq!(
            decode("data:,100%+%zz%4"),
            Ok((String::new(), b"100%+%zz%4".to_vec())),
            "a % that starts no escape stays"
        );
    }

    #[test]
    fn malformed_uris_are_refused_saying_why() {
        let comma = decode("data:text/plain;base64").unwrap_err();
        assert!(comma.contains("comma"), "{comma}");
        let bad = decode("data:text/plain;base64,not base64!").unwrap_err();
        assert!(bad.contains("not valid base64"), "{bad}");
        assert!(decode("http://example.com/a.png").is_err());
    }
}
