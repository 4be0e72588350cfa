//! Calls to Vault's HTTP API that vaultrs does not cover (the SSH and transit engines, KV answers
//! read with their metadata): one node, the current token, JSON in and out.

use serde_json::Value;

use super::{VaultError, VaultStore};

impl VaultStore {
    /// `method {path}` on node `node` with the current token and a JSON body: the answer, or
    /// `None` for 404.
    pub(super) async fn json_call(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultError> {
        let operation = || format!("{method} {}", path.split('?').next().unwrap_or(path));
        let Some(text) = self.text_call(node, method.clone(), path, body).await? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VaultError::BadResponse {
                operation: operation(),
                reason: e.to_string(),
            })
    }

    /// `method {path}` on node `node`: the answer's body, or `None` for 404.
    pub(super) async fn text_call(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<String>, VaultError> {
        let token = self.token();
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.address(node)))
            .header("X-Vault-Token", token.as_str());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(node, &e))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(node, &e))?;
        let operation = || format!("{method} {}", path.split('?').next().unwrap_or(path));
        match status {
            200..=299 => Ok(Some(text)),
            404 => Ok(None),
            403 => Err(VaultError::Denied {
                operation: operation(),
            }),
            503 => Err(VaultError::Sealed),
            _ => Err(VaultError::Failed {
                operation: operation(),
                status,
                message: vault_errors(&text),
            }),
        }
    }
}

/// The `errors` of a Vault answer, joined (or the start of the body when it has none).
fn vault_errors(body: &str) -> String {
    let errors: Option<Vec<String>> = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v["errors"].as_array().map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
    });
    match errors {
        Some(errors) => errors.join("; "),
        None => body.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_are_joined() {
        assert_eq!(
            vault_errors(r#"{"errors":["ttl is larger than maximum allowed 28800"]}"#),
            "ttl is larger than maximum allowed 28800"
        );
        assert_eq!(vault_errors("<html>"), "<html>");
    }
}
