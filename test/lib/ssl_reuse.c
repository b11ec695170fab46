/* ssl_reuse.c: one SSL object used for two TLS connections in a row (SSL_clear, then
 * SSL_set_fd with a new socket), as connection-pooling clients do. Usage: ssl_reuse PORT
 * Sends "GET /small.txt" on each connection and prints what it read. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dial(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("connect");
		exit(1);
	}
	return fd;
}

static void exchange(SSL *ssl, int fd)
{
	const char req[] = "GET /small.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
	char buf[4096];
	int n;

	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1 || SSL_write(ssl, req, sizeof(req) - 1) <= 0) {
		fprintf(stderr, "TLS failed\n");
		exit(1);
	}
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
}

int main(int argc, char **argv)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(ctx);
	int port = argc > 1 ? atoi(argv[1]) : 443;
	int fd1 = dial(port), fd2;

	exchange(ssl, fd1);
	SSL_clear(ssl); /* the same SSL* again, no SSL_shutdown, the old socket still open */
	fd2 = dial(port);
	exchange(ssl, fd2);
	SSL_shutdown(ssl);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd1);
	close(fd2);
	return 0;
}
