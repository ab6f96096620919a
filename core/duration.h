/* Go-style durations ("500ms", "30s", "2m", "1h30m", "1.5s") as flags and config use them. */
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

#endif
