/*
 * The Qwen2 pre-tokenizer: the Split regex of Qwen1.5/Qwen2 tokenizer.json files,
 *
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 *   \s*[\r\n]+|\s+(?!\S)|\s+
 *
 * written out by hand with the semantics of the Oniguruma engine HF tokenizers runs it
 * with (alternatives in order, the first that matches wins, greedy quantifiers that
 * backtrack). Internal to qpk_tokenizer; exposed so tests can check piece boundaries.
 */
#ifndef QPK_TOKENIZER_PRETOK_H
#define QPK_TOKENIZER_PRETOK_H

#include <stddef.h>

/* The pattern, byte for byte as tokenizer.json holds it once its JSON escapes are undone. */
extern const char qpk_pretok_qwen2_pattern[];

/*
 * End (exclusive byte offset) of the piece that starts at pos, 0 <= pos < n, in valid
 * UTF-8 s[0..n). Always > pos: every character starts some alternative, so the pieces
 * tile the text and "Isolated" splitting leaves nothing between matches.
 */
size_t qpk_pretok_next(const char *s, size_t n, size_t pos);

#endif
