/* boring_tls.c: a TLS client and server on BoringSSL (Debian's android-libboringssl, built by
 * test/kernel/boringssl.test.ts against /usr/include/android and linked with the rpath of
 * /usr/lib/x86_64-linux-gnu/android), one connection each:
 *   boring_tls server PORT CERT KEY FILE  accepts one connection on 127.0.0.1:PORT, reads an
 *                                         HTTP/1.0 request with its Content-Length body, answers
 *                                         200 with FILE as the body, shuts down and exits
 *   boring_tls client PORT                connects, sends its standard input as one SSL_write,
 *                                         copies what it reads until the close to stdout
 * Exit code 0 only if every step worked. */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "boring_tls: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static char *slurp(FILE *f, size_t *len)
{
	size_t cap = 1 << 16, n = 0, got;
	char *b = malloc(cap);

	while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap)
			b = realloc(b, cap *= 2);
	}
	if (!b)
		die("out of memory");
	*len = n;
	return b;
}

static int server(int port, const char *cert, const char *key, const char *file)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	static char req[1 << 20];
	char head[128];
	size_t have = 0, want = 0, body_len;
	int one = 1, lfd, fd, n;
	char *body, *end;
	FILE *f;
	SSL *ssl;

	if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		die("cannot load the certificate");
	if (!(f = fopen(file, "rb")))
		die("cannot open the body file");
	body = slurp(f, &body_len);
	fclose(f);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 8) < 0)
		die("cannot listen");
	if ((fd = accept(lfd, NULL, NULL)) < 0)
		die("accept failed");
	/* The test's readiness check connects and closes first: wait for one that talks TLS. */
	for (;;) {
		ssl = SSL_new(ctx);
		SSL_set_fd(ssl, fd);
		if (SSL_accept(ssl) == 1)
			break;
		SSL_free(ssl);
		close(fd);
		if ((fd = accept(lfd, NULL, NULL)) < 0)
			die("accept failed");
	}
	/* The request: headers, then Content-Length bytes. */
	for (;;) {
		if (have == sizeof(req))
			die("request too large");
		n = SSL_read(ssl, req + have, sizeof(req) - have);
		if (n <= 0)
			die("SSL_read failed");
		have += n;
		end = memmem(req, have, "\r\n\r\n", 4);
		if (!end)
			continue;
		if (!want) {
			char *cl = memmem(req, end - req, "Content-Length: ", 16);
			want = (end - req) + 4 + (cl ? strtoul(cl + 16, NULL, 10) : 0);
		}
		if (have >= want)
			break;
	}
	n = snprintf(head, sizeof(head), "HTTP/1.0 200 ok\r\nContent-Length: %zu\r\n\r\n", body_len);
	if (SSL_write(ssl, head, n) != n || SSL_write(ssl, body, body_len) != (int)body_len)
		die("SSL_write failed");
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	close(lfd);
	SSL_CTX_free(ctx);
	return 0;
}

static int client(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	char buf[16384];
	size_t len;
	char *req = slurp(stdin, &len);
	int fd = socket(AF_INET, SOCK_STREAM, 0), n;
	SSL *ssl;

	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("cannot connect");
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		die("handshake failed");
	if (SSL_write(ssl, req, len) != (int)len)
		die("SSL_write failed");
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	SSL_free(ssl);
	close(fd);
	SSL_CTX_free(ctx);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "server"))
		return server(atoi(argv[2]), argv[3], argv[4], argv[5]);
	if (argc == 3 && !strcmp(argv[1], "client"))
		return client(atoi(argv[2]));
	fprintf(stderr, "usage: boring_tls server PORT CERT KEY FILE | boring_tls client PORT\n");
	return 2;
}
