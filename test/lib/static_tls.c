/* static_tls.c: a TLS client for test/unsupported-tls.test.ts, built with `gcc -static` against
 * libssl.a and stripped, so that it carries OpenSSL with none of the symbols the helper looks
 * for. Usage: static_tls PORT [SECONDS]: sends one HTTP/1.0 GET to 127.0.0.1:PORT, prints the
 * response, then stays alive SECONDS (default 0) with its socket open. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char req[] = "GET / HTTP/1.0\r\n\r\n";
	struct sockaddr_in a = { .sin_family = AF_INET };
	char buf[4096];
	int fd, n;
	SSL_CTX *ctx;
	SSL *ssl;

	if (argc < 2) {
		fprintf(stderr, "usage: static_tls PORT [SECONDS]\n");
		return 2;
	}
	a.sin_port = htons(atoi(argv[1]));
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("connect");
		return 1;
	}
	ctx = SSL_CTX_new(TLS_client_method());
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1) {
		fprintf(stderr, "handshake failed\n");
		return 1;
	}
	SSL_write(ssl, req, sizeof(req) - 1);
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	fflush(stdout);
	if (argc > 2)
		sleep(atoi(argv[2]));
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return 0;
}
