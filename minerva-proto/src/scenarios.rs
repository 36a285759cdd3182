//! The four standard benchmark scenarios, shared by the daemon (which runs them) and clients
//! (which hand the same prompts to peers): name, prompt, new tokens.

pub const STANDARD: [(&str, &str, u32); 4] = [
    ("greeting", "Hello, how are you?", 20),
    (
        "knowledge",
        "Explain quantum computing in simple terms.",
        100,
    ),
    (
        "code",
        "Write a Rust function to calculate Fibonacci numbers",
        150,
    ),
    (
        "long",
        "Summarize the history of artificial intelligence",
        200,
    ),
];
