/*
 * fsh: the guest side of tests/kernel/test_kernel61_vm.py, built with `gcc -static` at test
 * time and run inside a Linux 6.1 guest from its busybox initramfs.
 *
 *   fsh walk ROOT                 one line per object below ROOT, as the kernel shows it
 *   fsh lookups ROOT FILE         lstat each path of FILE (one escaped path a line)
 *   fsh addkeys MNT FILE          FS_IOC_ADD_ENCRYPTION_KEY per line "v2 KEY" / "v1 DESC KEY"
 *   fsh mkbig DIR KEY COUNT LEN   a casefolded encrypted DIR whose Big/ has COUNT links
 *
 * Output lines (walk): type, octal mode, nlink, size, inode, data, path, tab-separated.
 * data is the SHA-256 of a regular file's contents, a symlink's target, "-" for other
 * types, or "ERR <errno>" when the kernel refused.  Names are printed with bytes outside
 * '!'..'~' and the backslash as \xHH, so that any name survives a text line.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fscrypt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 (FIPS 180-4) ---------------------------------------------------------- */

struct sha256 {
	uint32_t h[8];
	uint64_t total;
	uint8_t buf[64];
	size_t fill;
};

static const uint32_t K256[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(struct sha256 *s, const uint8_t *p)
{
	uint32_t w[64], v[8];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, s->h, sizeof(v));
	for (int i = 0; i < 64; i++) {
		uint32_t e = v[4], a = v[0];
		uint32_t t1 = v[7] + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
			      ((e & v[5]) ^ (~e & v[6])) + K256[i] + w[i];
		uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
			      ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
		memmove(v + 1, v, 7 * sizeof(uint32_t));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		s->h[i] += v[i];
}

static void sha256_init(struct sha256 *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, iv, sizeof(iv));
	s->total = 0;
	s->fill = 0;
}

static void sha256_update(struct sha256 *s, const uint8_t *p, size_t n)
{
	s->total += n;
	while (n) {
		size_t take = 64 - s->fill < n ? 64 - s->fill : n;
		memcpy(s->buf + s->fill, p, take);
		s->fill += take;
		p += take;
		n -= take;
		if (s->fill == 64) {
			sha256_block(s, s->buf);
			s->fill = 0;
		}
	}
}

static void sha256_hex(struct sha256 *s, char out[65])
{
	uint64_t bits = s->total * 8;
	uint8_t pad = 0x80, len[8];
	sha256_update(s, &pad, 1);
	pad = 0;
	while (s->fill != 56)
		sha256_update(s, &pad, 1);
	for (int i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha256_update(s, len, 8);
	for (int i = 0; i < 8; i++)
		sprintf(out + 8 * i, "%08x", s->h[i]);
}

/* ---- helpers ------------------------------------------------------------------------- */

static void put_escaped(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c > '~' || c == '\\')
			printf("\\x%02x", c);
		else
			putchar(c);
	}
}

static size_t unescape(const char *in, char *out)
{
	size_t n = 0;
	while (*in && *in != '\n') {
		if (in[0] == '\\' && in[1] == 'x' && in[2] && in[3]) {
			char hex[3] = { in[2], in[3], 0 };
			out[n++] = (char)strtol(hex, NULL, 16);
			in += 4;
		} else {
			out[n++] = *in++;
		}
	}
	out[n] = 0;
	return n;
}

static int unhex(const char *hex, uint8_t *out, size_t max)
{
	size_t n = strlen(hex) / 2;
	if (n > max)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char b[3] = { hex[2 * i], hex[2 * i + 1], 0 };
		out[i] = (uint8_t)strtol(b, NULL, 16);
	}
	return (int)n;
}

static const char *kind(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return "file";
	case S_IFDIR: return "dir";
	case S_IFLNK: return "symlink";
	case S_IFIFO: return "fifo";
	case S_IFCHR: return "chardev";
	case S_IFBLK: return "blockdev";
	case S_IFSOCK: return "socket";
	}
	return "unknown";
}

/* ---- walk ---------------------------------------------------------------------------- */

/* The SHA-256 of each inode read so far: a hard link is looked up and stat'ed by its
 * own name, but its contents are read once (under TCG, reading thousands of links to
 * one inode again would only cost time). */
static struct seen { unsigned long ino; char data[72]; } *seen;
static size_t nseen, capseen;

static const char *seen_data(unsigned long ino)
{
	for (size_t i = nseen; i-- > 0;)
		if (seen[i].ino == ino)
			return seen[i].data;
	return NULL;
}

static void print_data(int dirfd, const char *name, const struct stat *st)
{
	if (S_ISREG(st->st_mode)) {
		const char *known = seen_data((unsigned long)st->st_ino);
		if (known) {
			fputs(known, stdout);
			return;
		}
		char data[72];
		int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW);
		if (fd < 0) {
			snprintf(data, sizeof(data), "ERR %d", errno);
		} else {
			struct sha256 s;
			uint8_t buf[65536];
			ssize_t got;
			sha256_init(&s);
			while ((got = read(fd, buf, sizeof(buf))) > 0)
				sha256_update(&s, buf, (size_t)got);
			if (got < 0)
				snprintf(data, sizeof(data), "ERR %d", errno);
			else
				sha256_hex(&s, data);
			close(fd);
		}
		fputs(data, stdout);
		if (nseen == capseen) {
			capseen = capseen ? 2 * capseen : 256;
			seen = realloc(seen, capseen * sizeof(*seen));
		}
		seen[nseen].ino = (unsigned long)st->st_ino;
		memcpy(seen[nseen++].data, data, sizeof(data));
	} else if (S_ISLNK(st->st_mode)) {
		char target[8192];
		ssize_t n = readlinkat(dirfd, name, target, sizeof(target));
		if (n < 0)
			printf("ERR %d", errno);
		else
			put_escaped(target, (size_t)n);
	} else {
		putchar('-');
	}
}

/* Everything below the directory open as dirfd, whose path below the root is rel. */
static void walk(int dirfd, char *rel, size_t len)
{
	DIR *d = fdopendir(dirfd);
	if (!d) {
		printf("opendir\tERR %d\t", errno);
		put_escaped(rel, len);
		putchar('\n');
		close(dirfd);
		return;
	}
	struct dirent *de;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno) {
				printf("readdir\tERR %d\t", errno);
				put_escaped(rel, len);
				putchar('\n');
			}
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		size_t nl = strlen(de->d_name);
		if (len + 1 + nl + 1 > 8192)
			continue;
		size_t at = len ? len + 1 : 0;
		if (len)
			rel[len] = '/';
		memcpy(rel + at, de->d_name, nl + 1);
		struct stat st;
		int ok = fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0;
		if (!ok) {
			printf("lstat\tERR %d\t", errno);
		} else {
			printf("%s\t%o\t%lu\t%lld\t%lu\t", kind(st.st_mode), (unsigned)st.st_mode,
			       (unsigned long)st.st_nlink, (long long)st.st_size,
			       (unsigned long)st.st_ino);
			print_data(dirfd, de->d_name, &st);
			putchar('\t');
		}
		put_escaped(rel, at + nl);
		putchar('\n');
		if (ok && S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
			if (sub < 0) {
				printf("opendir\tERR %d\t", errno);
				put_escaped(rel, at + nl);
				putchar('\n');
			} else {
				walk(sub, rel, at + nl);
			}
		}
		rel[len] = 0;
	}
	closedir(d);
}

/* ---- lookups ------------------------------------------------------------------------- */

static int lookups(const char *root, const char *file)
{
	FILE *f = fopen(file, "r");
	if (!f)
		return 1;
	char line[8192], rel[8192], path[16384];
	while (fgets(line, sizeof(line), f)) {
		unescape(line, rel);
		snprintf(path, sizeof(path), "%s/%s", root, rel);
		struct stat st;
		if (lstat(path, &st) < 0)
			printf("ERR %d\t", errno);
		else
			printf("%lu\t", (unsigned long)st.st_ino);
		put_escaped(rel, strlen(rel));
		putchar('\n');
	}
	fclose(f);
	return 0;
}

/* ---- keys and policies ----------------------------------------------------------------- */

static int add_key(int fd, int v1, const char *deschex, const char *keyhex, uint8_t id[16])
{
	uint8_t raw[FSCRYPT_MAX_KEY_SIZE];
	int n = unhex(keyhex, raw, sizeof(raw));
	if (n <= 0)
		return -1;
	struct fscrypt_add_key_arg *arg = calloc(1, sizeof(*arg) + (size_t)n);
	if (v1) {
		arg->key_spec.type = FSCRYPT_KEY_SPEC_TYPE_DESCRIPTOR;
		unhex(deschex, arg->key_spec.u.descriptor, FSCRYPT_KEY_DESCRIPTOR_SIZE);
	} else {
		arg->key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
	}
	arg->raw_size = (uint32_t)n;
	memcpy(arg->raw, raw, (size_t)n);
	int ret = ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg);
	if (ret == 0 && id)
		memcpy(id, arg->key_spec.u.identifier, 16);
	free(arg);
	return ret;
}

static int addkeys(const char *mnt, const char *file)
{
	int fd = open(mnt, O_RDONLY | O_DIRECTORY);
	FILE *f = fopen(file, "r");
	if (fd < 0 || !f)
		return 1;
	char line[512], a[16], b[256], c[256];
	int bad = 0;
	while (fgets(line, sizeof(line), f)) {
		int fields = sscanf(line, "%15s %255s %255s", a, b, c);
		int v1 = !strcmp(a, "v1");
		if (fields < 2 || (v1 && fields < 3))
			continue;
		uint8_t id[16];
		if (add_key(fd, v1, v1 ? b : NULL, v1 ? c : b, id) < 0) {
			printf("addkey %s ERR %d\n", a, errno);
			bad = 1;
		} else {
			printf("addkey %s OK\n", a);
		}
	}
	fclose(f);
	close(fd);
	return bad;
}

static int mkbig(const char *dir, const char *keyhex, long count, long len)
{
	char path[4096], name[300];
	if (mkdir(dir, 0755) < 0)
		return perror("mkdir"), 1;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	int flags;
	if (fd < 0 || ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
		return perror("getflags"), 1;
	flags |= FS_CASEFOLD_FL;
	if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
		return perror("setflags casefold"), 1;
	struct fscrypt_policy_v2 pol = {
		.version = FSCRYPT_POLICY_V2,
		.contents_encryption_mode = FSCRYPT_MODE_AES_256_XTS,
		.filenames_encryption_mode = FSCRYPT_MODE_AES_256_CTS,
		.flags = FSCRYPT_POLICY_FLAGS_PAD_32,
	};
	if (add_key(fd, 0, NULL, keyhex, pol.master_key_identifier) < 0)
		return perror("add key"), 1;
	if (ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &pol) < 0)
		return perror("set policy"), 1;
	close(fd);
	snprintf(path, sizeof(path), "%s/Readme.TXT", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return perror("Readme.TXT"), 1;
	for (int i = 0; i < 300; i++)
		fprintf(f, "line %d of a casefolded encrypted directory\n", i);
	fclose(f);
	snprintf(path, sizeof(path), "%s/Big", dir);
	if (mkdir(path, 0755) < 0)
		return perror("mkdir Big"), 1;
	char target[4096];
	snprintf(target, sizeof(target), "%s/Big/Target.bin", dir);
	f = fopen(target, "w");
	if (!f)
		return perror("Target.bin"), 1;
	for (int i = 0; i < 5000; i++)
		fputc((i * 7 + 3) & 0xff, f);
	fclose(f);
	for (long i = 0; i < count; i++) {
		/* Mixed case, padded to LEN bytes: few to a leaf, so index nodes come soon. */
		int n = snprintf(name, sizeof(name), "Entry-%05ld-", i);
		for (; n < len && n < 255; n++)
			name[n] = "MixedCase"[n % 9];
		name[n] = 0;
		snprintf(path, sizeof(path), "%s/Big/%s", dir, name);
		if (link(target, path) < 0)
			return perror("link"), 1;
	}
	sync();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "walk")) {
		char rel[8192] = "";
		int fd = open(argv[2], O_RDONLY | O_DIRECTORY);
		if (fd < 0)
			return perror(argv[2]), 1;
		walk(fd, rel, 0);
		return 0;
	}
	if (argc >= 4 && !strcmp(argv[1], "lookups"))
		return lookups(argv[2], argv[3]);
	if (argc >= 4 && !strcmp(argv[1], "addkeys"))
		return addkeys(argv[2], argv[3]);
	if (argc >= 6 && !strcmp(argv[1], "mkbig"))
		return mkbig(argv[2], argv[3], atol(argv[4]), atol(argv[5]));
	fprintf(stderr, "usage: fsh walk|lookups|addkeys|mkbig ...\n");
	return 2;
}
