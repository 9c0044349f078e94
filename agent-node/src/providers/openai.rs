//! Facts about OpenAI's models that both OpenAI wire formats (Chat Completions and
//! Responses) act on. Kept apart so that neither format imports the other.

/// Whether the model is an OpenAI reasoning model (o1, o3, o4, gpt-5 families), which takes
/// `max_completion_tokens` instead of `max_tokens` and rejects `temperature` and `top_p`.
pub fn is_reasoning_model(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}
