/* The units of flag values: Go-style durations ("500ms", "30s", "2m", "1h30m", "1.5s") and
 * Kubernetes-style byte quantities ("10Mi", "1Gi", "500k", "16384"). */
#ifndef TOKENGATE_DURATION_H
#define TOKENGATE_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Parses s into milliseconds. Accepts a sequence of <decimal number><unit> with units
 * ns, us, ms, s, m, h, and the bare "0". Sub-millisecond results are rounded down.
 * Returns 0 on success, -1 if s is empty, malformed, negative or above 10 years. */
int duration_parse(const char *s, int64_t *out_ms);

/* Formats ms as the shortest Go-style text ("2m", "1m30s", "500ms", "0s") into out. */
void duration_format(int64_t ms, char *out, size_t cap);

/* Parses a Kubernetes-style quantity of bytes: a decimal number with an optional suffix,
 * binary (Ki, Mi, Gi, Ti: powers of 1024) or decimal (k, M, G, T: powers of 1000), as in a
 * container's resources. "16384", "16Ki", "1.5Mi" and "500k" are accepted; the result must
 * be a whole number of bytes and at most max. No sign, no exponent, no space, no "K" or "KB"
 * (Kubernetes spells kilo "k"). Returns 0 on success, -1 otherwise. */
int quantity_parse_bytes(const char *s, uint64_t max, uint64_t *out_bytes);

#endif
