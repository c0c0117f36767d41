//! Pagination tokens (Documentation/compatibility.md, "Pagination").
//!
//! A token is 4 bytes, little-endian `{u16 limit, u16 page}` (pages start at
//! 1), in base64 with the URL-safe alphabet and `=` padding: limit 100, page 2
//! is `ZAACAA==`. The original fleetctl only echoes `nextPageToken` back, but
//! the bytes are still a compatibility promise: a token from one fleetd must be
//! understood by another.
//!
//! The error messages are the 400 messages the API sends, in the original's words.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;

/// One page of a listing: `limit` items per page, the `page`-th page (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    pub limit: u16,
    pub page: u16,
}

/// Why a `nextPageToken` was refused; `Display` is the API's 400 message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The query carried `nextPageToken` more than once.
    #[error("too many values for page token")]
    TooManyValues,
    /// The token is not base64 or too short; the text mimics Go's decoder
    /// errors, which the original sent verbatim.
    #[error("{0}")]
    Undecodable(String),
    /// The token was made for another page size.
    #[error("token limit must be {0}")]
    WrongLimit(u16),
    #[error("token page must be greater than zero")]
    ZeroPage,
}

impl PageToken {
    /// The first page for a server whose page size is `limit`.
    pub fn first(limit: u16) -> PageToken {
        PageToken { limit, page: 1 }
    }

    /// The page after this one.
    pub fn next(self) -> PageToken {
        PageToken {
            limit: self.limit,
            page: self.page.saturating_add(1),
        }
    }

    /// The wire form: URL-safe base64 with padding of `{limit, page}` LE.
    pub fn encode(self) -> String {
        let mut bytes = [0u8; 4];
        bytes[..2].copy_from_slice(&self.limit.to_le_bytes());
        bytes[2..].copy_from_slice(&self.page.to_le_bytes());
        URL_SAFE.encode(bytes)
    }

    /// Decodes a token without checking it against a server's limit. Like the
    /// original (Go `binary.Read`), bytes past the fourth are ignored.
    ///
    /// # Errors
    /// [`TokenError::Undecodable`] for bad base64 or fewer than 4 bytes.
    pub fn decode(text: &str) -> Result<PageToken, TokenError> {
        let bytes = URL_SAFE
            .decode(text)
            .map_err(|error| TokenError::Undecodable(go_base64_message(&error)))?;
        match bytes.as_slice() {
            // Go's binary.Read says EOF when nothing was read and
            // "unexpected EOF" when the read was cut short.
            [] => Err(TokenError::Undecodable("EOF".to_owned())),
            [l0, l1, p0, p1, ..] => Ok(PageToken {
                limit: u16::from_le_bytes([*l0, *l1]),
                page: u16::from_le_bytes([*p0, *p1]),
            }),
            _ => Err(TokenError::Undecodable("unexpected EOF".to_owned())),
        }
    }

    /// Decodes and checks a token against the server's page size.
    ///
    /// # Errors
    /// Any [`TokenError`] but `TooManyValues`.
    pub fn parse(text: &str, server_limit: u16) -> Result<PageToken, TokenError> {
        let token = PageToken::decode(text)?;
        if token.limit != server_limit {
            return Err(TokenError::WrongLimit(server_limit));
        }
        if token.page == 0 {
            return Err(TokenError::ZeroPage);
        }
        Ok(token)
    }

    /// The page a request asks for, from all the values of its
    /// `nextPageToken` query parameter: the first page when there is none.
    ///
    /// # Errors
    /// [`TokenError::TooManyValues`] for more than one value, else as
    /// [`PageToken::parse`].
    pub fn from_query_values(values: &[&str], server_limit: u16) -> Result<PageToken, TokenError> {
        match values {
            [] => Ok(PageToken::first(server_limit)),
            [value] => PageToken::parse(value, server_limit),
            _ => Err(TokenError::TooManyValues),
        }
    }

    /// The index range of this page in a collection of `total` items, and
    /// whether a next page exists (the collection is strictly longer than
    /// `page * limit`). A page past the end is empty, with no next page.
    pub fn window(self, total: usize) -> (std::ops::Range<usize>, bool) {
        let limit = usize::from(self.limit);
        let end = usize::from(self.page).saturating_mul(limit);
        let start = end.saturating_sub(limit);
        (start.min(total)..end.min(total), total > end)
    }
}

/// Go's `base64.CorruptInputError` text for a decode error.
fn go_base64_message(error: &base64::DecodeError) -> String {
    let offset = match error {
        base64::DecodeError::InvalidByte(offset, _)
        | base64::DecodeError::InvalidLastSymbol(offset, _) => *offset,
        // Go reports the end of the input for a short final quantum.
        base64::DecodeError::InvalidLength(length) => *length,
        base64::DecodeError::InvalidPadding => {
            return "illegal base64 data: invalid padding".to_owned();
        }
    };
    format!("illegal base64 data at input byte {offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(limit: u16, page: u16) -> PageToken {
        PageToken { limit, page }
    }

    #[test]
    fn encodes_the_appendix_a_vectors() {
        for (tok, text) in [
            (token(100, 1), "ZAABAA=="),
            (token(100, 2), "ZAACAA=="),
            (token(19, 11852), "EwBMLg=="),
            (token(12482, 0), "wjAAAA=="),
        ] {
            assert_eq!(tok.encode(), text, "{tok:?}");
            assert_eq!(PageToken::decode(text), Ok(tok), "{text}");
        }
    }

    #[test]
    fn decodes_the_appendix_a_vectors() {
        assert_eq!(PageToken::decode("_wMAAA=="), Ok(token(1023, 0)));
        assert_eq!(PageToken::decode("LQAJAA=="), Ok(token(45, 9)));
    }

    #[test]
    fn refuses_undecodable_tokens() {
        assert_eq!(
            PageToken::decode(""),
            Err(TokenError::Undecodable("EOF".into()))
        );
        assert!(matches!(
            PageToken::decode("basdfasdf"),
            Err(TokenError::Undecodable(_))
        ));
        // Valid base64 of only two bytes.
        assert_eq!(
            PageToken::decode("ZAA="),
            Err(TokenError::Undecodable("unexpected EOF".into()))
        );
        // Padding is required, and the standard alphabet's `/` is refused.
        assert!(PageToken::decode("ZAABAA").is_err());
        assert!(PageToken::decode("/wMAAA==").is_err());
    }

    #[test]
    fn parse_checks_limit_and_page() {
        assert_eq!(PageToken::parse("ZAACAA==", 100), Ok(token(100, 2)));
        let wrong_limit = PageToken::parse("ZAACAA==", 3).unwrap_err();
        assert_eq!(wrong_limit.to_string(), "token limit must be 3");
        let zero = PageToken::parse(&token(100, 0).encode(), 100).unwrap_err();
        assert_eq!(zero.to_string(), "token page must be greater than zero");
    }

    #[test]
    fn query_values() {
        assert_eq!(PageToken::from_query_values(&[], 7), Ok(token(7, 1)));
        assert_eq!(
            PageToken::from_query_values(&["BwACAA=="], 7),
            Ok(token(7, 2))
        );
        let many = PageToken::from_query_values(&["a", "b"], 7).unwrap_err();
        assert_eq!(many.to_string(), "too many values for page token");
        assert_eq!(
            PageToken::from_query_values(&[""], 7)
                .unwrap_err()
                .to_string(),
            "EOF"
        );
    }

    #[test]
    fn windows() {
        // 5 items, 2 per page: [0,2) more, [2,4) more, [4,5) last, then empty.
        assert_eq!(token(2, 1).window(5), (0..2, true));
        assert_eq!(token(2, 2).window(5), (2..4, true));
        assert_eq!(token(2, 3).window(5), (4..5, false));
        assert_eq!(token(2, 4).window(5), (5..5, false));
        // Exactly full: no next page.
        assert_eq!(token(2, 2).window(4), (2..4, false));
        assert_eq!(token(2, 1).window(0), (0..0, false));
        assert_eq!(token(2, 1).next(), token(2, 2));
    }
}
